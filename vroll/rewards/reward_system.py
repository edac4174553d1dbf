"""ROLL's `RemoteRewardSystemWorker` (vroll's `reward_system`): each sample is scored by a reward
service over HTTP, with ROLL's protocol (roll/pipeline/rlvr/rewards/remote_reward_system_worker.py):

1. submit: POST `submit_url`, JSON {priority, project_id, experiment_id, global_step, data_id,
   rollout_id, prompt, response, reward_info, reward_manager, timeout}; the reply {errcode: 0,
   reward_request_id} (any other errcode, an HTTP error or no reply is tried again, `submit_tries`
   times, `retry_delay_s` apart);
2. result: GET `get_result_url` with the JSON body {reward_request_id}, every `poll_interval_s`,
   until the reply says {errcode: 0, reward_score} (errcode 1: still running) or `task_timeout_s`
   has passed since the submission;
3. a sample without a score after `attempts` rounds of both raises, and the router scores it 0 and
   counts it in `reward/<name>/errors` (ROLL scores it 0 with a warning).

Headers as ROLL's: `XRL-Authorization: Bearer <token>` (when a token is set) and `BusinessType`
(`reward_system_type`). Samples run in parallel threads (at most `max_workers`), as ROLL's do. The
service's address is vroll's `reward_system_config` (ROLL reads the same keys from a dict its RLVR
pipeline never fills, so ROLL always calls its built-in defaults, an internal service)."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vroll.models.paths import resolve_model_path

log = logging.getLogger(__name__)

TOKEN_ENV = "XRL_AUTHORIZATION"  # the token when reward_system_config.xrl_authorization is not set
# ROLL's clean-up of the decoded prompt before it is sent
ROLL_PROMPT_CUTS = ("<|endoftext|>", "<pad>", "assistant\n<think>")


def reward_info(extra: dict, ground_truth: Any, reward_manager: list[dict]) -> dict:
    """ROLL's `_uniform_reward_ref_info_adaper`, row by row: the row's `reward_ref_info`; else its
    code test cases (when it has `test_cases` and `case_type`, or a plug-in of reward_manager_config
    names code); else its `ground_truth`."""
    if extra.get("reward_ref_info") is not None:
        return extra["reward_ref_info"]
    code = bool(extra.get("test_cases") and extra.get("case_type")) or \
        any("code" in str(p.get("plugin_name", "")) for p in reward_manager if isinstance(p, dict))
    if code and extra.get("test_cases") is not None:
        return {"case_type": extra.get("case_type"), "test_cases": extra["test_cases"]}
    if ground_truth is not None:
        return {"ground_truth": ground_truth}
    raise ValueError("the row has none of reward_ref_info, test_cases with case_type, ground_truth: the reward "
                     "system has nothing to score the response against")


class RewardSystemWorker:
    checks_answer = False  # the service's score is a reward, not a verdict on the answer
    per_sample_errors = True  # `score_or_errors`: a failed sample is not asked again by the router

    def __init__(self, cfg):
        sc = cfg.reward_system_config
        if sc is None or not sc.submit_url or not sc.get_result_url:
            raise ValueError("reward_type reward_system needs reward_system_config.submit_url and get_result_url")
        self.sc, self.reward_manager = sc, list(cfg.reward_manager_config)
        token = sc.xrl_authorization or os.environ.get(TOKEN_ENV)
        self.headers = {"Content-Type": "application/json", "BusinessType": sc.reward_system_type}
        if token:
            self.headers["XRL-Authorization"] = f"Bearer {token}"
        self.special = special_tokens(cfg.model_args.model_name_or_path, cfg.model_args.trust_remote_code)
        self.step = 0  # the step being scored (ROLL's global_step), set by the router

    # -- the protocol -----------------------------------------------------------------------------
    def _call(self, method: str, url: str, body: dict) -> dict:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=self.headers, method=method)
        with urllib.request.urlopen(request, timeout=self.sc.request_timeout_s) as reply:
            return json.load(reply)

    def submit(self, payload: dict) -> str:
        error = "no reply"
        for attempt in range(self.sc.submit_tries):
            if attempt:
                time.sleep(self.sc.retry_delay_s)
            try:
                reply = self._call("POST", self.sc.submit_url, payload)
                if int(reply.get("errcode", -1)) == 0 and reply.get("reward_request_id") is not None:
                    return str(reply["reward_request_id"])
                error = f"errcode {reply.get('errcode')!r}: {reply.get('errmsg', 'no errmsg')}"
            except Exception as e:  # noqa: BLE001 - tried again, then reported with the sample
                error = f"{type(e).__name__}: {e}"
        raise RuntimeError(f"submit to {self.sc.submit_url}: {self.sc.submit_tries} tries failed, last: {error}")

    def result(self, request_id: str, submitted: float) -> float:
        error = "no reply"
        while True:
            try:
                reply = self._call("GET", self.sc.get_result_url, {"reward_request_id": request_id})
                code = int(reply.get("errcode", -1))
                if code == 0 and reply.get("reward_score") is not None:
                    return float(reply["reward_score"])
                error = "still running" if code == 1 else \
                    f"errcode {reply.get('errcode')!r}: {reply.get('errmsg', 'no reward_score')}"
            except Exception as e:  # noqa: BLE001 - polled again until the task's time is up
                error = f"{type(e).__name__}: {e}"
            if time.monotonic() - submitted > self.sc.task_timeout_s:
                raise TimeoutError(f"task {request_id} at {self.sc.get_result_url}: no score within "
                                   f"task_timeout_s={self.sc.task_timeout_s:g}, last: {error}")
            time.sleep(self.sc.poll_interval_s)

    # -- scoring ----------------------------------------------------------------------------------
    def payload(self, item) -> dict:
        extra = item.extra or {}
        prompt = strip(item.prompt_text, self.special + ROLL_PROMPT_CUTS)
        return {"priority": self.sc.priority, "project_id": self.sc.project_id,
                "experiment_id": self.sc.experiment_id, "global_step": self.step,
                "data_id": None if extra.get("id") is None else str(extra["id"]), "rollout_id": uuid.uuid4().hex,
                "prompt": prompt, "response": strip(item.response_text, self.special),
                "reward_info": reward_info(extra, item.ground_truth, self.reward_manager),
                "reward_manager": self.reward_manager, "timeout": self.sc.task_timeout_s}

    def score_one(self, item) -> float:
        payload = self.payload(item)
        error: Exception | None = None
        for _ in range(self.sc.attempts):  # ROLL asks again from the submission when a task gives no score
            try:
                submitted = time.monotonic()
                return self.result(self.submit(payload), submitted)
            except Exception as e:  # noqa: BLE001 - the next attempt, then reported with the sample
                error = e
        raise RuntimeError(f"reward system: {self.sc.attempts} attempt(s) gave no score, last: {error}")

    def score_or_errors(self, items) -> list[float | Exception]:
        """Each sample's score, or the exception that left it without one (scored 0 and counted by
        the router); samples in parallel, as ROLL's threads."""
        def one(item):
            try:
                return self.score_one(item)
            except Exception as e:  # noqa: BLE001 - reported by the router, the step goes on
                return e

        if not items:
            return []
        with ThreadPoolExecutor(max(1, min(self.sc.max_workers, len(items)))) as pool:
            return list(pool.map(one, items))

    def score(self, items) -> list[float]:
        out = self.score_or_errors(items)
        for r in out:
            if isinstance(r, Exception):
                raise r
        return out


def special_tokens(model_path: str | None, trust_remote_code: bool = False) -> tuple[str, ...]:
    """The texts of the model's special tokens: ROLL decodes prompts and responses without them."""
    if not model_path:
        return ()
    from transformers import AutoTokenizer

    folder = resolve_model_path(model_path, "reward_system's model_args.model_name_or_path")
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return tuple(sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True))


def strip(text: str, cuts: tuple[str, ...]) -> str:
    for cut in cuts:
        text = text.replace(cut, "")
    return text

"""ROLL's LLM judge (`LLMJudgeRewardWorker`, vroll's `llm_judge`): a judge model behind an
OpenAI-compatible endpoint (`judge_model_type: api`: `vllm serve`, ...) or served by vroll's own vllm
strategy (`inference`: the worker's own model; `cluster`: the top-level `reward_model`, one engine the
cluster judges share) is asked whether the response's final answer matches the reference; 1 when its
reply says yes, else 0 (ROLL's reading of the reply; a cluster judge reads a "Score: X" first, as
the ROLL commit that added cluster judges does)."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from vroll.config.roll_compat import ROLL_JUDGE_PROMPTS

# vroll's wording of ROLL's one named judge prompt (same placeholders, same YES / NO contract)
YES_NO_PROMPT = """Given a problem, decide whether the final answer of the solution below matches the reference
answer. The reference may be an option letter (A, B, C, D), a number, an expression, or a list of answers
when there are several questions; it may be in any language, and your judgement does not depend on it.

- If the solution's final answer matches the reference, answer YES.
- If it does not match, or the solution is unclear, incomplete or ambiguous, answer NO.

Reply with YES or NO only.

Question:
{question}

Solution (its final step):
{response}

Reference answer:
{reference}

Answer:
"""
NAMED_PROMPTS = dict.fromkeys(ROLL_JUDGE_PROMPTS, YES_NO_PROMPT)


def judge_template(judge_prompt: str | None) -> str:
    """ROLL's prompt name, or a template of vroll's with {question}, {response} and {reference}."""
    if judge_prompt is None:
        return YES_NO_PROMPT
    if judge_prompt in NAMED_PROMPTS:
        return NAMED_PROMPTS[judge_prompt]
    if "{response}" in judge_prompt:
        return judge_prompt
    raise ValueError(f"judge_prompt {judge_prompt!r} is neither one of ROLL's prompt names "
                     f"({', '.join(NAMED_PROMPTS)}) nor a template with {{question}}, {{response}}, {{reference}}")


def judge_messages(template: str, prompt: str, response: str, reference: str | None) -> list[dict]:
    """The judge's one user message; the question is the prompt's last user turn, as ROLL takes it."""
    values = {"question": prompt.split("user\n")[-1].strip() if "user\n" in prompt else prompt,
              "response": response, "reference": str(reference)}
    return [{"role": "user", "content": re.sub(r"\{(question|response|reference)\}", lambda m: values[m[1]], template)}]


def yes_no_score(reply: str) -> float:
    """ROLL's reading (api, inference): 1 when the reply contains "yes" (any case), else 0."""
    return 1.0 if "yes" in reply.lower() else 0.0


SCORE_LINE = re.compile(r"Score:\s*([0-9]+(?:\.[0-9]*)?)", re.IGNORECASE)


def score_or_yes_no(reply: str) -> float:
    """ROLL's reading for cluster judges (bd17364f): a "Score: X" in the reply first (X over 1 read
    out of 10, clipped to [0, 1]), else yes/no as `yes_no_score`."""
    match = SCORE_LINE.search(reply)
    if match:
        score = float(match[1])
        return min(max(score / 10.0 if score > 1.0 else score, 0.0), 1.0)
    return yes_no_score(reply)


# how each judge_model_type reads the judge's reply
READERS = {"api": yes_no_score, "inference": yes_no_score, "cluster": score_or_yes_no}


class LlmJudgeWorker:
    """Asks the judge about each sample: the endpoint (api, in parallel; a sample whose every try fails
    raises) or, with `engine` (inference: the judge model on vroll's vllm strategy, started by the
    launcher), one generate call for all samples with the worker's generating_args. A sample that raises
    is scored 0 by the router and counted as an error."""

    checks_answer = True

    def __init__(self, cfg, tries: int = 3, timeout_s: float = 60.0, engine=None):
        self.template = judge_template(cfg.judge_prompt)
        self.read = READERS[cfg.judge_model_type or "api"]
        self.engine, self.generating_args = engine, cfg.generating_args
        # the endpoint's samples each succeed or fail on their own (`score_or_errors`): the router
        # does not ask the judge again about the ones that succeeded
        self.per_sample_errors = engine is None
        if engine is not None:
            return
        self.url = cfg.judge_api_url.rstrip("/") + "/chat/completions"
        self.model, self.tries, self.timeout_s = cfg.judge_model_name, tries, timeout_s
        self.key = cfg.judge_api_key or os.environ.get("OPENAI_API_KEY")

    def ask(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages}).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        error: Exception | None = None
        for _ in range(self.tries):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    content = json.load(reply)["choices"][0]["message"]["content"]
                if content:
                    return content
                error = ValueError("the judge's reply is empty")
            except Exception as e:  # noqa: BLE001 - tried again, then reported with the sample
                error = e
        raise RuntimeError(f"judge endpoint {self.url}: {self.tries} tries failed, last: {error}")

    def score(self, items) -> list[float]:
        if self.engine is not None:
            return [self.read(reply) for reply in self.generate([self.messages(i) for i in items])]
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(self.score_one, items))

    def score_or_errors(self, items) -> list[float | Exception]:
        """The endpoint's verdict on each sample (in parallel), or the exception that left it without one."""
        def one(item):
            try:
                return self.score_one(item)
            except Exception as e:  # noqa: BLE001 - scored 0 and counted by the router
                return e

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, items))

    def score_one(self, item) -> float:
        if self.engine is not None:
            return self.read(self.generate([self.messages(item)])[0])
        return self.read(self.ask(self.messages(item)))

    def messages(self, item) -> list[dict]:
        return judge_messages(self.template, item.prompt_text, item.response_text, item.ground_truth)

    def generate(self, conversations: list[list[dict]]) -> list[str]:
        """The judge model's reply to each conversation (formatted with its own chat template by the
        engine), stripped as ROLL strips it; a prompt the engine skipped (too long) raises."""
        results = self.engine.generate(conversations, self.generating_args)
        skipped = [r.index for r in results if not r.samples]
        if skipped:
            raise ValueError(f"the judge engine skipped {len(skipped)} judge prompt(s) longer than its max_model_len")
        return [r.samples[0].text.strip() for r in results]

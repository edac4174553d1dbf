"""ROLL's RemoteRewardSystemWorker (vroll's reward_system) against a reward service started here on
127.0.0.1 (no network): ROLL's submit / poll protocol and payload, retries, and a service that fails,
hangs or never finishes scoring 0, counted in reward/<name>/errors, without stopping the step."""

import json
import logging
import time
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import local_http_server, write_yaml
from vroll.config import ConfigError, load_config
from vroll.config.schema import RewardConfig
from vroll.rewards.reward_system import reward_info
from vroll.rewards.workers import RewardItem, RewardRouter, missing_fields


class Service(BaseHTTPRequestHandler):
    """ROLL's reward system: /submit takes a task, /result gives its score after `running` polls (the
    score: 1 when the response holds the reference); `submit_failures` 500s first; `hang_s` makes
    every reply that late; `never` keeps every task running."""

    submit_failures, running, hang_s, never = 0, 1, 0.0, False
    tasks: dict = {}
    submitted: list = []
    polls: list = []

    def _reply(self, body: dict, status: int = 200):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_POST(self):
        body = self._body()
        time.sleep(Service.hang_s)
        Service.submitted.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if Service.submit_failures > 0:
            Service.submit_failures -= 1
            return self._reply({}, 500)
        task = f"t{len(Service.tasks)}"
        reference = body["reward_info"].get("ground_truth")
        Service.tasks[task] = [Service.running, float(reference is not None and str(reference) in body["response"])]
        self._reply({"errcode": 0, "errmsg": "ok", "reward_request_id": task})

    def do_GET(self):
        body = self._body()
        Service.polls.append((self.path, body))
        task = Service.tasks.get(body["reward_request_id"])
        if task is None:
            return self._reply({"errcode": 2, "errmsg": "no such task"})
        if Service.never or task[0] > 0:
            task[0] -= 1
            return self._reply({"errcode": 1, "errmsg": "running"})
        self._reply({"errcode": 0, "reward_score": task[1], "dimention_reward_score": {}})

    def log_message(self, *args):
        pass


@pytest.fixture
def service():
    Service.submit_failures, Service.running, Service.hang_s, Service.never = 0, 1, 0.0, False
    Service.tasks, Service.submitted, Service.polls = {}, [], []
    with local_http_server(Service) as url:
        yield url


def worker(url, **over):
    system = {"submit_url": f"{url}/submit", "get_result_url": f"{url}/result", "xrl_authorization": "tok",
              "project_id": "p", "experiment_id": "e", "retry_delay_s": 0.01, "poll_interval_s": 0.01,
              "task_timeout_s": 2, "request_timeout_s": 2.0, **over}
    return RewardConfig(reward_type="reward_system", reward_system_config=system, tag_included=["rm"],
                        reward_manager_config=[{"plugin_name": "math_verify"}])


def test_rolls_protocol_scores_each_sample_and_sends_rolls_payload(service):
    router = RewardRouter({"rm": worker(service)})
    items = [RewardItem("<|im_start|>user\n1+1?assistant\n<think>", "It is 2", "2", "rm", {"id": 7}),
             RewardItem("user\n2+2?", "It is 5", "4", "rm")]
    combined, correct, metrics = router.score(items, step=3)
    assert combined == [1.0, 0.0] and correct == [None, None]  # a reward, not an accuracy verdict
    assert metrics["reward/rm/errors"] == 0.0 and metrics["reward/rm/mean"] == 0.5
    assert len(Service.submitted) == 2 and len(Service.polls) == 4  # each task "running" once, then done
    path, headers, body = next(s for s in Service.submitted if s[2]["data_id"] == "7")
    assert path == "/submit" and headers["xrl-authorization"] == "Bearer tok" and headers["businesstype"] == "online"
    assert body["prompt"] == "<|im_start|>user\n1+1?" and body["response"] == "It is 2"  # ROLL's cuts
    assert {k: body[k] for k in ("priority", "project_id", "experiment_id", "global_step", "reward_info",
                                 "reward_manager", "timeout")} == {
        "priority": 1, "project_id": "p", "experiment_id": "e", "global_step": 3, "reward_info": {"ground_truth": "2"},
        "reward_manager": [{"plugin_name": "math_verify"}], "timeout": 2}
    assert len(body["rollout_id"]) == 32 and Service.polls[0][0] == "/result"
    assert set(Service.polls[0][1]) == {"reward_request_id"}


def test_submit_failures_are_tried_again(service):
    Service.submit_failures = 2  # two 500s, then taken: within submit_tries
    combined, _, metrics = RewardRouter({"rm": worker(service, submit_tries=3)}).score(
        [RewardItem("q", "4", "4", "rm")])
    assert combined == [1.0] and metrics["reward/rm/errors"] == 0 and len(Service.submitted) == 3


def test_a_failing_hanging_or_unfinished_service_scores_0_and_the_step_goes_on(service, caplog):
    item = RewardItem("q", "4", "4", "rm")
    caplog.set_level(logging.WARNING)
    # unreachable: nothing listens there
    start = time.monotonic()
    combined, _, metrics = RewardRouter({"rm": worker("http://127.0.0.1:9", submit_tries=2, attempts=2)}).score(
        [item, item])
    assert combined == [0.0, 0.0] and metrics["reward/rm/errors"] == 2.0
    assert "rewards.rm: sample 0 scored 0 because the worker raised: RuntimeError: reward system: 2 attempt(s) " \
           "gave no score, last: submit to http://127.0.0.1:9/submit: 2 tries failed, last: URLError" in caplog.text
    # every task stays running: each attempt gives up at task_timeout_s
    Service.never = True
    combined, _, metrics = RewardRouter({"rm": worker(service, task_timeout_s=1, attempts=2)}).score([item])
    assert combined == [0.0] and metrics["reward/rm/errors"] == 1.0 and len(Service.submitted) == 2
    assert "no score within task_timeout_s=1, last: still running" in caplog.text
    # a service slower than request_timeout_s
    Service.never, Service.hang_s = False, 1.0
    combined, _, metrics = RewardRouter({"rm": worker(service, request_timeout_s=0.2, submit_tries=1,
                                                      attempts=1)}).score([item, RewardItem("q", "5", "4", "rm")])
    assert combined == [0.0, 0.0] and metrics["reward/rm/errors"] == 2.0 and "timed out" in caplog.text
    assert time.monotonic() - start < 15
    Service.hang_s = 0.0
    # an item with nothing to score against is that sample's error; the other one is scored
    combined, _, metrics = RewardRouter({"rm": worker(service)}).score([item, RewardItem("q", "x", None, "rm")])
    assert combined == [1.0, 0.0] and metrics["reward/rm/errors"] == 1.0


def test_reward_info_is_rolls_adapter_row_by_row():
    assert reward_info({"reward_ref_info": {"a": 1}, "test_cases": [1]}, "g", []) == {"a": 1}
    assert reward_info({"test_cases": [1], "case_type": "stdin"}, "g", []) == {"case_type": "stdin", "test_cases": [1]}
    assert reward_info({"test_cases": [1]}, "g", [{"plugin_name": "code_runner"}]) == {"case_type": None,
                                                                                      "test_cases": [1]}
    assert reward_info({"test_cases": [1]}, "g", []) == {"ground_truth": "g"}
    with pytest.raises(ValueError, match="nothing to score the response against"):
        reward_info({}, None, [])


def test_special_tokens_are_cut_as_rolls_decoding_does(service, tiny_model):
    from transformers import AutoTokenizer

    specials = [t for t in AutoTokenizer.from_pretrained(tiny_model).all_special_tokens if t]
    cfg = worker(service)
    cfg.model_args.model_name_or_path = tiny_model
    RewardRouter({"rm": cfg}).score([RewardItem(f"{specials[0]}user\nq{specials[-1]}", f"4{specials[0]}", "4", "rm")])
    body = Service.submitted[0][2]
    assert (body["prompt"], body["response"]) == ("user\nq", "4")


ROLL_WORKER = "roll.pipeline.rlvr.rewards.remote_reward_system_worker.RemoteRewardSystemWorker"


def test_rolls_worker_cls_needs_the_services_address(tmp_path):
    data = {"pretrain": "m", "rewards": {"rm": {"worker_cls": ROLL_WORKER, "tag_included": ["rm"],
                                                "reward_manager_config": [{"plugin_name": "p"}]}}}
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(tmp_path / "c.yaml", data))
    assert [str(i) for i in e.value.issues] == [
        f"rewards.rm.reward_system_config.{k}: is required with ROLL's RemoteRewardSystemWorker (reward_type "
        "reward_system): the reward service's address (ROLL calls its authors' internal service, which vroll does "
        "not)" for k in ("submit_url", "get_result_url")]
    data["rewards"]["rm"]["reward_system_config"] = {"submit_url": "http://h/s", "get_result_url": "http://h/r"}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    assert cfg.rewards["rm"].reward_type == "reward_system" and cfg.rewards["rm"].reward_manager_config == [
        {"plugin_name": "p"}]
    assert "reward_manager_config" not in " ".join(cfg._no_effect)
    rows = [RewardItem("q", "", None, "rm", {"test_cases": [1]}), RewardItem("q", "", None, "rm")]
    for r, line in zip(rows, ("f:1", "f:2")):
        r.source = line
    issues = missing_fields(cfg.rewards, rows, "validation.data_args")
    assert [str(i) for i in issues] == [
        "validation.data_args.file_name: 1 row(s) have no 'reward_ref_info' or 'test_cases' or 'ground_truth', which "
        "reward worker 'rm' (reward_system) needs to score them (f:2): add 'reward_ref_info' or 'test_cases' or "
        "'ground_truth' to each, or tag them for other workers"]

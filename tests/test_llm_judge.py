"""ROLL's LLM judge through an OpenAI-compatible endpoint (a fake one here): the request it sends, ROLL's
reading of the reply, retries, and an endpoint that fails scoring 0 without stopping the step."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vroll.config.rules import check_judge
from vroll.config.schema import RewardConfig
from vroll.rewards.llm_judge import YES_NO_PROMPT, judge_messages, yes_no_score
from vroll.rewards.workers import RewardItem, RewardRouter


class FakeJudge(BaseHTTPRequestHandler):
    """Says YES when the response's text holds the reference; fails `failures` times first."""

    failures, seen = 0, []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.seen.append((self.path, self.headers.get("Authorization"), body))
        if FakeJudge.failures > 0:
            FakeJudge.failures -= 1
            self.send_response(500)
            self.end_headers()
            return
        text = body["messages"][0]["content"]
        solution, reference = text.split("Solution (its final step):\n")[1].split("\n\nReference answer:\n")
        verdict = "YES" if reference.split("\n")[0] in solution else "NO"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeJudge.failures, FakeJudge.seen = 0, []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def judge(url, **kw):
    return RewardConfig(reward_type="llm_judge", judge_model_type="api", judge_api_url=url,
                        judge_model_name="judge", judge_prompt="Qwen2.5-7B-Instruct-RLVR-prompt", **kw)


def test_the_judge_scores_by_its_yes_or_no(endpoint):
    router = RewardRouter({"judge": judge(endpoint, judge_api_key="k", tag_included=["qa"], weight=0.5)})
    items = [RewardItem("<|im_start|>user\nCapital of France?", "It is Paris.", "Paris", "qa"),
             RewardItem("<|im_start|>user\nCapital of Spain?", "It is Lisbon.", "Madrid", "qa")]
    combined, correct, metrics = router.score(items)
    assert combined == [0.5, 0.0] and correct == [1.0, 0.0] and metrics["reward/judge/errors"] == 0
    path, auth, body = sorted(FakeJudge.seen, key=lambda s: "France" not in s[2]["messages"][0]["content"])[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "judge"
    assert body["messages"] == judge_messages(YES_NO_PROMPT, "<|im_start|>user\nCapital of France?", "It is Paris.",
                                              "Paris")
    assert "Question:\nCapital of France?\n" in body["messages"][0]["content"]  # the question after "user\n"


def test_rolls_reading_of_the_reply():
    assert yes_no_score("YES") == 1.0 and yes_no_score("Yes, it matches.") == 1.0
    assert yes_no_score("NO") == 0.0 and yes_no_score("I cannot tell") == 0.0
    assert yes_no_score("Eyes closed: no") == 1.0  # ROLL looks for "yes" anywhere, and so does vroll


def test_retries_then_an_unreachable_judge_scores_0_without_stopping_the_step(endpoint):
    FakeJudge.failures = 2  # two 500s, then an answer: within the 3 tries
    router = RewardRouter({"judge": judge(endpoint)})
    item = RewardItem("user\nq", "Paris", "Paris", None)
    assert router.score([item])[0] == [1.0]
    router = RewardRouter({"judge": judge("http://127.0.0.1:9/v1")})  # nothing listens there
    combined, _, metrics = router.score([item])
    assert combined == [0.0] and metrics["reward/judge/errors"] == 1.0


def test_templates_of_the_users_own_and_braces_in_text():
    got = judge_messages("Q={question} A={response} R={reference} {other}", "q", "a {reference} }{", "r")
    assert got[0]["content"] == "Q=q A=a {reference} }{ R=r {other}"  # one pass: the response is not re-read


def test_the_judge_config_is_checked():
    def found(**kw):
        return [str(i) for i in check_judge("rewards.j", RewardConfig(reward_type="llm_judge", **kw))]

    assert found(judge_model_type="api", judge_api_url="http://x/v1") == []
    assert found(judge_model_type="api")[0].startswith("rewards.j.judge_api_url: is required")
    assert "`inference` (the judge on vroll's own strategies) is not in vroll yet" in found(
        judge_model_type="inference")[0]
    assert found(judge_model_type="api", judge_api_url="u", judge_prompt="my-prompt")[0].startswith(
        "rewards.j.judge_prompt: 'my-prompt' is neither one of ROLL's prompt names")

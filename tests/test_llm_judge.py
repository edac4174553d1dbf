"""ROLL's LLM judge through an OpenAI-compatible endpoint (a fake one here): the request it sends, ROLL's
reading of the reply, retries, and an endpoint that fails scoring 0 without stopping the step."""

import json
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import local_http_server
from vroll.config.rules import check_judge
from vroll.config.schema import RewardConfig
from vroll.rewards.llm_judge import YES_NO_PROMPT, judge_messages, score_or_yes_no, yes_no_score
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
    FakeJudge.failures, FakeJudge.seen = 0, []
    with local_http_server(FakeJudge) as url:
        yield f"{url}/v1"



def assert_judged_like_transformers(model_path, conversations, results, replies, rewards) -> None:
    """The judge engine's greedy replies are transformers' on the same weights (6 tokens), and each
    reply's score is its yes/no reading."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import hf_greedy
    from vroll.strategy.prompts import encode_prompt

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    assert [r.samples[0].token_ids for r in results] == [
        hf_greedy(model, encode_prompt(0, c, tok).token_ids, 6) for c in conversations]
    assert replies == [r.samples[0].text.strip() for r in results]
    assert rewards == [yes_no_score(r) for r in replies]

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


def test_a_cluster_judges_reading_of_the_reply_takes_a_score_first():
    """bd17364f's `_parse_score`, written from its rule: "Score: X" (any case), X over 1 read out of
    10, clipped to [0, 1]; without a score, yes/no."""
    assert score_or_yes_no("Score: 7") == 0.7 and score_or_yes_no("score:10, yes") == 1.0
    assert score_or_yes_no("Score: 0.25") == 0.25 and score_or_yes_no("Score: 1") == 1.0
    assert score_or_yes_no("Score: 42") == 1.0 and score_or_yes_no("Score: 0 - no") == 0.0
    assert score_or_yes_no("The answer matches: YES") == 1.0 and score_or_yes_no("NO") == 0.0
    assert score_or_yes_no("Score: none") == 0.0  # no number after it: yes/no, and there is no "yes"


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
    assert found(judge_model_type="inference") == [
        "rewards.j.strategy_args.strategy_name: None: judge_model_type: inference serves the judge model on vroll's "
        "vllm strategy (as ROLL's judge examples do); set vllm",
        "rewards.j.model_args.model_name_or_path: is required with judge_model_type: inference: the judge model's "
        "folder"]
    assert found(judge_model_type="inference", model_args={"model_name_or_path": "m"},
                 strategy_args={"strategy_name": "vllm"}) == []
    assert found(judge_model_type="cluster") == []  # the top-level reward_model serves it (a file-level check)
    assert found(judge_model_type="server")[0].startswith("rewards.j.judge_model_type: 'server': a judge runs `api`")
    assert found(judge_model_type="api", judge_api_url="u", judge_prompt="my-prompt")[0].startswith(
        "rewards.j.judge_prompt: 'my-prompt' is neither one of ROLL's prompt names")


class FakeEngine:
    """Records what the judge asks; replies by the conversation's text."""

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def generate(self, prompts, generating_args=None, **kw):
        from vroll.strategy.results import PromptResult, Sample

        self.calls.append(("generate", prompts, generating_args))
        out = []
        for i, p in enumerate(prompts):
            text = self.reply(p[0]["content"])
            out.append(PromptResult(i, [], samples=[] if text is None else [Sample([], text, "stop")]))
        return out

    def sleep(self, level=None):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))


def inference_judge(**kw):
    return RewardConfig(reward_type="llm_judge", judge_model_type="inference", judge_prompt="Q={question} A={response} R={reference}",
                        model_args={"model_name_or_path": "m"}, strategy_args={"strategy_name": "vllm"},
                        generating_args={"max_new_tokens": 5, "temperature": 0.0}, **kw)


def test_an_inference_judge_asks_its_engine_once_per_step_and_reads_yes_or_no():
    engine = FakeEngine(lambda text: {"Q=a A=x R=1": "  YES.", "Q=b A=y R=2": "no", "Q=c A=z R=3": None}[text])
    router = RewardRouter({"j": inference_judge()}, models={"j": engine})
    items = [RewardItem("a", "x", "1", None), RewardItem("b", "y", "2", None), RewardItem("c", "z", "3", None)]
    rewards, _, metrics = router.score(items)
    assert rewards == [1.0, 0.0, 0.0] and metrics["reward/j/errors"] == 1.0  # a skipped (too long) prompt
    kind, prompts, g = engine.calls[0]
    assert kind == "generate" and [p[0]["content"] for p in prompts] == ["Q=a A=x R=1", "Q=b A=y R=2", "Q=c A=z R=3"]
    assert prompts[0][0]["role"] == "user" and g.max_new_tokens == 5 and g.temperature == 0.0
    with pytest.raises(ValueError, match="needs its judge engine started"):
        RewardRouter({"j": inference_judge()}, models={})


def test_a_judge_sharing_devices_sleeps_between_scorings():
    from vroll.roles.launcher import AsleepBetweenCalls

    engine = FakeEngine(lambda text: "yes")
    judge = AsleepBetweenCalls(engine)
    judge.generate([[{"role": "user", "content": "q"}]])
    assert [c[0] for c in engine.calls] == ["sleep", "wake_up", "generate", "sleep"]
    assert engine.calls[0] == ("sleep", 1)


def test_an_inference_judge_on_a_real_engine_replies_as_transformers_does(tmp_path, tiny_model):
    """The launcher starts the judge's model on vllm in an engine process of its own (Ray), asleep
    between scorings since its device is actor_train's; its greedy replies are transformers'."""
    from conftest import write_yaml
    from vroll.config import load_config
    from vroll.roles.launcher import AsleepBetweenCalls, launch_reward_models

    data = {"seed": 3, "pretrain": tiny_model,
            "actor_train": {"strategy_args": {"strategy_name": "fsdp2_train"}, "device_mapping": [0]},
            "rewards": {"judge": {
                "reward_type": "llm_judge", "judge_model_type": "inference", "judge_prompt": "Q={question} A={response}",
                "model_args": {"model_name_or_path": tiny_model, "dtype": "fp32"},
                "generating_args": {"max_new_tokens": 6, "temperature": 0.0},
                "strategy_args": {"strategy_name": "vllm", "strategy_config": {
                    "block_size": 32, "max_model_len": 256, "kv_cache_memory_bytes": 64 << 20, "enforce_eager": True}},
                "device_mapping": [0]}}}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data), platform="cpu")
    items = [RewardItem("What is 2+2?", "4", "4", None), RewardItem("hello", "yes yes", "no", None)]
    with ExitStack() as stack:
        models = launch_reward_models(cfg, stack)
        assert isinstance(models["judge"], AsleepBetweenCalls)
        router = RewardRouter(cfg.rewards, models)
        worker = router.workers["judge"]
        conversations = [worker.messages(i) for i in items]
        replies = worker.generate(conversations)
        results = models["judge"].generate(conversations, cfg.rewards["judge"].generating_args)
        rewards, _, metrics = router.score(items)
    assert_judged_like_transformers(tiny_model, conversations, results, replies, rewards)
    assert metrics["reward/judge/errors"] == 0.0


def cluster_judge(prompt, **kw):
    return RewardConfig(reward_type="llm_judge", judge_model_type="cluster", judge_prompt=prompt, **kw)


def test_cluster_judges_ask_the_one_reward_model_engine_each_with_its_own_prompt_and_sampling():
    engine = FakeEngine(lambda text: "YES" if text.startswith("A:") else "no")
    configs = {"a": cluster_judge("A: {response}", generating_args={"max_new_tokens": 3}, tag_included=["x"]),
               "b": cluster_judge("B: {response}", generating_args={"max_new_tokens": 4}, tag_included=["y"])}
    router = RewardRouter(configs, models={"a": engine, "b": engine})  # the launcher's one engine for both
    rewards, correct, metrics = router.score([RewardItem("q", "r1", "1", "x"), RewardItem("q", "r2", "2", "y")])
    assert rewards == [1.0, 0.0] and correct == [1.0, 0.0] and metrics["reward/b/errors"] == 0.0
    assert [(c[1][0][0]["content"], c[2].max_new_tokens) for c in engine.calls] == [("A: r1", 3), ("B: r2", 4)]
    with pytest.raises(ValueError, match="judge_model_type: cluster needs its judge engine started"):
        RewardRouter({"a": configs["a"]}, models={})


def test_a_score_in_the_reply_counts_for_a_cluster_judge_only():
    engine = FakeEngine(lambda text: "Score: 8")
    configs = {"c": cluster_judge("{response}", tag_included=["x"]), "i": inference_judge(tag_included=["y"])}
    router = RewardRouter(configs, models={"c": engine, "i": engine})
    rewards, _, _ = router.score([RewardItem("q", "r", "1", "x"), RewardItem("q", "r", "1", "y")])
    assert rewards == [0.8, 0.0]  # ROLL's inference judge reads yes/no only


def test_a_judge_sleeps_between_scorings_where_another_judge_shares_its_devices(tmp_path):
    from conftest import write_yaml
    from vroll.config import load_config
    from vroll.roles.launcher import devices_of_other_roles

    def judge(devices):
        return {"reward_type": "llm_judge", "judge_model_type": "inference", "model_args": {"model_name_or_path": "m"},
                "strategy_args": {"strategy_name": "vllm"}, "device_mapping": devices}

    data = {"pretrain": "m", "actor_train": {"strategy_args": {"strategy_name": "fsdp2_train"}, "device_mapping": [0]},
            "rewards": {"a": judge([1]), "b": judge([1]), "c": judge([2, 3]), "math": {"reward_type": "math_rule"}}}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    assert devices_of_other_roles(cfg, cfg.rewards["a"]) == {0, 1, 2, 3}  # b's device 1: a sleeps between scorings
    assert devices_of_other_roles(cfg, cfg.rewards["c"]) & {2, 3} == set()  # c's devices are its own: awake


JUDGE_CLS = "roll.pipeline.rlvr.rewards.llm_judge_reward_worker.LLMJudgeRewardWorker"


def test_rolls_reward_model_is_the_cluster_judges_server_and_is_not_started_without_one(tmp_path):
    from conftest import write_yaml
    from vroll.config import load_config

    data = {"pretrain": "m", "rewards": {"llm_judge": {
        "worker_cls": JUDGE_CLS, "judge_model_type": "cluster", "tag_included": ["RLVR"], "world_size": 32,
        "judge_prompt": "Qwen2.5-7B-Instruct-RLVR-prompt", "generating_args": {"max_new_tokens": 512},
        "data_args": {"template": "native"}}},
        "reward_model": {"name": "reward_llm", "worker_cls": "roll.pipeline.base_worker.InferWorker",
                         "model_args": {"model_name_or_path": "judge", "attn_implementation": "fa2"},
                         "generating_args": {"max_new_tokens": 512, "temperature": 0.3},
                         "data_args": {"template": "native"}, "device_mapping": "[6, 7]",
                         "strategy_args": {"strategy_name": "hf_infer"}}}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    assert cfg.rewards["llm_judge"].judge_model_type == "cluster" and cfg.reward_model.device_mapping == [6, 7]
    assert cfg.reward_model.strategy_args.strategy_name == "vllm"  # hf_infer does not generate in vroll
    assert cfg.reward_model.model_args.model_name_or_path == "judge" and "reward_model" in cfg.roles()
    assert cfg._differences["reward_model"].startswith("the judge engine of rewards.llm_judge")
    assert "each cluster judge generates with its own" in cfg._differences["reward_model.generating_args"]
    assert "judge model's own chat template" in cfg._differences["reward_model.data_args.template"]
    assert "judge model's own chat template" in cfg._differences["rewards.llm_judge.data_args.template"]
    data["rewards"]["llm_judge"]["judge_model_type"] = "api"
    data["rewards"]["llm_judge"]["judge_api_url"] = "http://127.0.0.1:1/v1"
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    assert cfg.reward_model is None and cfg._differences["reward_model"].startswith("not started: no judge_model_type")


def test_cluster_judges_share_the_reward_models_real_engine(tmp_path, tiny_model):
    """Two cluster judges, one reward_model engine (on Ray, asleep between scorings since its device
    is actor_train's): each judge's greedy replies are transformers'."""
    from conftest import write_yaml
    from vroll.config import load_config
    from vroll.roles.launcher import AsleepBetweenCalls, launch_reward_models

    judge = {"reward_type": "llm_judge", "judge_model_type": "cluster",
             "generating_args": {"max_new_tokens": 6, "temperature": 0.0}}
    data = {"seed": 3, "pretrain": tiny_model,
            "actor_train": {"strategy_args": {"strategy_name": "fsdp2_train"}, "device_mapping": [0]},
            "rewards": {"a": {**judge, "judge_prompt": "Q={question} A={response}", "tag_included": ["a"]},
                        "b": {**judge, "judge_prompt": "Is {response} right?", "tag_included": ["b"]}},
            "reward_model": {"model_args": {"model_name_or_path": tiny_model, "dtype": "fp32"},
                             "strategy_args": {"strategy_name": "vllm", "strategy_config": {
                                 "block_size": 32, "max_model_len": 256, "kv_cache_memory_bytes": 64 << 20,
                                 "enforce_eager": True}},
                             "device_mapping": [0]}}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data), platform="cpu")
    items = [RewardItem("What is 2+2?", "4", "4", "a"), RewardItem("hello", "yes", "no", "b")]
    with ExitStack() as stack:
        models = launch_reward_models(cfg, stack)
        assert models["a"] is models["b"] and isinstance(models["a"], AsleepBetweenCalls)
        router = RewardRouter(cfg.rewards, models)
        conversations = [router.workers["a"].messages(items[0]), router.workers["b"].messages(items[1])]
        replies = [router.workers[n].generate([c])[0] for n, c in zip("ab", conversations)]
        results = models["a"].generate(conversations, cfg.rewards["a"].generating_args)
        rewards, _, metrics = router.score(items)
    assert_judged_like_transformers(tiny_model, conversations, results, replies, rewards)
    assert metrics["reward/a/errors"] == 0.0

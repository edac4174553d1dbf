"""Reward routing by tag, combination by weight, and a worker that raises on one sample."""

import logging

from vroll.config.schema import RewardConfig
from vroll.config.domains import routing_notes
from vroll.rewards.workers import MathRuleWorker, RewardItem, RewardRouter, routes, unrouted_rows


class Echo:
    """A reward that is the length of the response, and raises on the word 'boom'."""

    checks_answer = False

    def score(self, items):
        return [self.score_one(it) for it in items]

    def score_one(self, item):
        if "boom" in item.response_text:
            raise RuntimeError("cannot score this")
        return float(len(item.response_text))


def configs():
    return {"math": RewardConfig(reward_type="math_rule", tag_included=["arithmetic"], weight=2.0),
            "echo": RewardConfig(reward_type="math_rule", tag_included=["chat", "arithmetic"], weight=0.5)}


def items():
    return [RewardItem("q", "<answer>4</answer>", "4", "arithmetic"),
            RewardItem("q", "abc", None, "chat"),
            RewardItem("q", "<answer>5</answer>", "4", "arithmetic")]


def test_routes_by_tag_and_combines_by_weight():
    cfg = configs()
    router = RewardRouter(cfg, workers={"math": MathRuleWorker(cfg["math"]), "echo": Echo()})
    combined, correct, metrics = router.score(items())
    # math (x2) only sees arithmetic; echo (x0.5) sees both tags
    assert combined == [2 * 1.0 + 0.5 * 18, 0.5 * 3, 2 * 0.0 + 0.5 * 18]
    assert correct == [1.0, None, 0.0]
    assert metrics["reward/math/mean"] == 0.5 and metrics["reward/echo/errors"] == 0


def test_a_worker_that_raises_scores_that_sample_zero_and_logs_it(caplog):
    cfg = configs()
    router = RewardRouter(cfg, workers={"math": MathRuleWorker(cfg["math"]), "echo": Echo()})
    batch = items() + [RewardItem("q", "boom", None, "chat")]
    with caplog.at_level(logging.WARNING):
        combined, _, metrics = router.score(batch)
    assert combined[:3] == [11.0, 1.5, 9.0] and combined[3] == 0.0
    assert metrics["reward/echo/errors"] == 1
    assert "rewards.echo: sample 3 scored 0 because the worker raised: RuntimeError: cannot score this" in caplog.text


def test_rule_without_ground_truth_scores_zero_not_crash():
    cfg = {"math": RewardConfig(reward_type="math_rule")}
    router = RewardRouter(cfg)
    combined, _, metrics = router.score([RewardItem("q", "<answer>4</answer>", None, None)])
    assert combined == [0.0] and metrics["reward/math/errors"] == 1


def test_rows_no_worker_takes_are_reported():
    rows = [RewardItem("q", "", None, "arithmetic"), RewardItem("q", "", None, "poetry"),
            RewardItem("q", "", None, "chat", {"domain": "judge"})]
    issues = unrouted_rows(configs(), rows, "validation.data_args")
    assert len(issues) == 1 and issues[0].path == "validation.data_args"
    assert "2 row(s) have no reward worker (tag(s) ['poetry'] and domain(s) ['judge']" in issues[0].message
    assert unrouted_rows(configs(), rows, "k", drawn=lambda r: r.tag == "arithmetic") == []  # never drawn: fine
    assert unrouted_rows({"all": RewardConfig()}, [RewardItem("q", "", None, None)], "k") == []


def rolls_file():
    """ROLL's shape: each tag under one worker, each worker with its tags."""
    return {"math_rule": RewardConfig(tag_included=["deepmath", "aime"]),
            "code_sandbox": RewardConfig(reward_type="code_sandbox", tag_included=["KodCode"]),
            "llm_judge": RewardConfig(reward_type="llm_judge", tag_included=["RLVR"])}


def test_rolls_rule_one_worker_per_row_by_its_domain_then_its_tag_then_math_rule():
    rewards = rolls_file()
    assert routes(rewards, "aime") == ["math_rule"] and routes(rewards, "KodCode") == ["code_sandbox"]
    assert routes(rewards, "KodCode", domain="llm_judge") == ["llm_judge"]  # the row's domain field wins
    assert routes(rewards, "poetry") == ["math_rule"] and routes(rewards, None) == ["math_rule"]  # ROLL's default
    assert routes(rewards, "aime", domain="nowhere") == []
    del rewards["math_rule"]
    assert routes(rewards, "poetry") == []
    assert routing_notes(rolls_file()) == {}  # nothing differs from ROLL


def test_vrolls_sum_where_the_file_asks_for_it_each_named_by_a_note():
    rewards = {"math": RewardConfig(tag_included=["arithmetic"]),
               "format": RewardConfig(reward_type="format", tag_included=["arithmetic"]),
               "length": RewardConfig(reward_type="format")}
    assert routes(rewards, "arithmetic") == ["math", "format", "length"]  # a shared tag, and the untagged worker
    assert routes(rewards, "chat") == ["length"]
    assert routes(rewards, "arithmetic", domain="math") == ["math"]  # a domain field: that worker only
    notes = routing_notes(rewards)
    assert notes["rewards.*.tag_included.arithmetic"].startswith(
        "tag 'arithmetic' is listed under math, format: vroll scores its rows with each and sums their weighted "
        "scores (ROLL scores them with the last, format, only")
    assert notes["rewards.length.tag_included"].startswith("empty: vroll gives length every row without a `domain`")
    assert routing_notes({"math": RewardConfig()}) == {}  # one worker: every row is its


def test_format_reward_needs_the_whole_response_to_match_and_does_not_count_as_accuracy():
    cfg = {"math": RewardConfig(reward_type="math_rule", extractors=["answer_tag"]),
           "format": RewardConfig(reward_type="format", pattern=r"<answer>-?\d+</answer>", weight=0.25)}
    router = RewardRouter(cfg)
    combined, correct, metrics = router.score([RewardItem("q", "<answer>4</answer>\n", "4", None),
                                               RewardItem("q", "<answer>4</answer>1</answer>", "4", None),
                                               RewardItem("q", "<answer>5</answer>", "4", None)])
    assert combined == [1.25, 1.0, 0.25]
    assert correct == [1.0, 1.0, 0.0]  # the format worker has no say in accuracy
    assert metrics["reward/format/mean"] == 2 / 3

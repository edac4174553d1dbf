"""Reward routing by tag, combination by weight, and a worker that raises on one sample."""

import logging

from vroll.config.schema import RewardConfig
from vroll.rewards.workers import MathRuleWorker, RewardItem, RewardRouter, unrouted_tags


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


def test_tags_no_worker_takes_are_reported():
    issues = unrouted_tags(configs(), {"arithmetic", "poetry"})
    assert len(issues) == 1 and "['poetry']" in issues[0].message
    assert unrouted_tags({"all": RewardConfig()}, {"poetry", None}) == []


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

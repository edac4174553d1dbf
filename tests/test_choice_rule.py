"""ROLL's multiple-choice rule (vroll's crossthinkqa) on real cases, graded loose / soft / strict as
ROLL's reward_type says, and ROLL's file keeping that meaning."""

import pytest

from vroll.config.schema import RewardConfig
from vroll.rewards.choice_rule import choice_reward, repetition_penalty
from vroll.rewards.workers import RewardItem, RewardRouter


@pytest.mark.parametrize("response, loose, soft, strict", [
    ("The answer is \\boxed{B}.", 1.0, 1.0, 1.0),  # right letter, boxed
    ("Comparing the options, the answer is (B) because ...", 1.0, 0.5, -1.0),  # right, not boxed
    ("\\boxed{C}", -1.0, -0.5, -1.0),  # wrong, boxed
    ("I think it is C.", -1.0, -1.0, -1.0),  # wrong: the first capital is "I"
    ("\\boxed{b}", -1.0, -0.5, -1.0),  # lower case is no option letter
    ("", -1.0, -1.0, -1.0),  # nothing
])
def test_grades(response, loose, soft, strict):
    assert [choice_reward(response, "B", g) for g in ("loose", "soft", "strict")] == [loose, soft, strict]


def test_repetition_penalty():
    assert repetition_penalty("one two") == 0.0  # fewer than 3 words
    assert repetition_penalty("a b c d e f") == 0.0  # no 3-gram twice
    assert repetition_penalty("a b a b a b") == pytest.approx(-0.5 * (1 - 2 / 4))  # 4 3-grams, 2 distinct


def test_worker_reads_after_thinking_and_adds_the_penalty():
    router = RewardRouter({"mc": RewardConfig(reward_type="crossthinkqa", grading="soft", tag_included=["mc"])})
    items = [RewardItem("q", "<think>maybe \\boxed{A}</think>\n\\boxed{B}<|im_end|>", "B", "mc"),
             RewardItem("q", "<think>x</think>\nthe answer is B", "B", "mc"),
             RewardItem("q", "\\boxed{B}", "", "mc")]  # no reference letter: an error, scored 0
    combined, correct, metrics = router.score(items)
    assert combined == [1.0, 0.5, 0.0] and correct == [1.0, 1.0, 0.0] and metrics["reward/mc/errors"] == 1.0


def test_rolls_measuring_workers_add_no_reward_and_count_accuracy():
    cfg = {"boxed": RewardConfig(reward_type="choice_boxed", tag_included=["mc"]),
           "val": RewardConfig(reward_type="choice_val", tag_included=["mmlu_pro", "poetry"])}
    router = RewardRouter(cfg)
    items = [RewardItem("q", "\\boxed{B}", "B", "mc"),
             RewardItem("q", "the answer is B", "B", "mc"),  # right but not boxed: wrong for choice_boxed
             RewardItem("q", "<think>x</think>\nthe answer is B", "B", "mmlu_pro"),  # right for choice_val
             RewardItem("q", "\\boxed{C}", "B", "mmlu_pro"),
             RewardItem("q", "\\boxed{B}", "B", "poetry")]  # a tag ROLL's val worker does not score: an error
    combined, correct, metrics = router.score(items)
    assert combined == [0.0] * 5 and correct == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert metrics["reward/boxed/mean"] == 0.5 and metrics["reward/val/errors"] == 1.0

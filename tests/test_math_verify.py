"""ROLL's math rule (vroll's math_verify) on real cases, each checked by hand."""

import pytest

from vroll.config.schema import RewardConfig
from vroll.rewards.math_verify import answer_region, last_boxed, verify_math
from vroll.rewards.workers import RewardItem, RewardRouter

T = "<think>some work</think> "


@pytest.mark.parametrize("response, reference", [
    (T + "The answer is \\boxed{\\frac{1}{2}}.", "1/2"),  # LaTeX fraction = plain fraction
    (T + "\\boxed{0.5}", "\\frac{1}{2}"),  # decimal = fraction
    (T + "\\boxed{\\dfrac{3}{4}}", "0.75"),
    (T + "\\boxed{\\sqrt{2}}", "\\sqrt 2"),
    (T + "\\boxed{x^2+2x+1}", "(x+1)^2"),  # symbolic equality
    (T + "\\boxed{\\{1,2\\}}", "\\{1, 2\\}"),  # sets
    (T + "\\boxed{1,000}", "1000"),
    (T + "So the result is 42.", "42"),  # no \boxed: math-verify finds the number
    ("I worked it out.\n\nSo x = \\boxed{3}", "3"),  # no </think>: the text after the last blank line
])
def test_right_answers_score_1(response, reference):
    assert verify_math(response, reference)


@pytest.mark.parametrize("response, reference", [
    (T + "\\boxed{4}", "3"),  # wrong
    (T + "\\boxed{\\frac{1}{3}}", "0.33"),  # close is not equal
    (T + "@@## }{ \\boxed{", "3"),  # garbage, an unclosed box
    (T, "3"),  # nothing after the thinking
    ("The answer is \\boxed{3}", "3"),  # ROLL's rule: no </think> and no blank line, no answer
    ("a<think>x</think> \\boxed{3}", "3"),  # <think> not at the start
    (T + "\\boxed{3}</think>\\boxed{3}", "3"),  # two </think>
    (T + "<answer>3</answer>", "3"),  # math-verify does not read answer tags
    (T + "\\boxed{3}", "}{garbage"),  # an unparsable reference
])
def test_wrong_or_malformed_score_0(response, reference):
    assert not verify_math(response, reference)


def test_region_and_boxed_rules():
    assert answer_region("x\n\ny\n\n z ", "") == "z"
    assert answer_region("\\boxed{3}", "<|im_start|>assistant\n<think>\n") == ""  # no region at all
    assert answer_region("work</think>ans", "...<think>\n") == "ans"  # the prompt opened the thinking
    assert answer_region("<think>w</think>ans", "...<think>\n") == ""  # a second <think>
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed('\\boxed{"}" + x}') == '"}" + x'  # braces inside quotes do not count
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("no box") is None
    assert verify_math("The answer is \\boxed{3}", "3", region="whole")


def test_worker_through_the_router():
    cfg = {"math": RewardConfig(reward_type="math_verify", tag_included=["math"], weight=2.0)}
    router = RewardRouter(cfg)
    items = [RewardItem("q", T + "\\boxed{\\frac{6}{4}}", "3/2", "math"),
             RewardItem("q", T + "\\boxed{2}", "3/2", "math"),
             RewardItem("q", T + "\\boxed{2}", None, "math")]  # no reference: an error, scored 0
    combined, correct, metrics = router.score(items)
    assert combined == [2.0, 0.0, 0.0] and correct == [1.0, 0.0, 0.0]
    assert metrics["reward/math/errors"] == 1.0

import pytest

from vroll.rewards.math_rule import MathRuleReward, extract_answer


@pytest.mark.parametrize("text, expected", [
    ("so the result is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}"),  # nested braces
    ("think... <answer> 19 </answer>", "19"),
    ("first 3, then 4, so 12", "12"),
    ("The answer is -7.", "-7"),
    ("no number here", None),
    ("\\boxed{12", "12"),  # unbalanced box: falls through to the last number
])
def test_extracts_the_final_answer(text, expected):
    assert extract_answer(text) == expected


def test_scores_numbers_by_value_and_never_raises():
    r = MathRuleReward()
    assert r.score("<answer>19</answer>", "19") == 1.0
    assert r.score("The answer is 19.0", "19") == 1.0
    assert r.score("The answer is 7/2", "3.5") == 1.0
    assert r.score("The answer is 1,000", "1000") == 1.0
    assert r.score("The answer is 18", "19") == 0.0
    assert r.score("", "19") == 0.0
    assert r.score("\x00\uffff garbage {{{", "19") == 0.0
    assert r.score(None, "19") == 0.0  # not even text: scores 0


def test_extractor_order_is_configurable():
    text = "<answer>5</answer> and later 6"
    assert MathRuleReward(extractors=("answer_tag",)).score(text, "5") == 1.0
    assert MathRuleReward(extractors=("last_number",)).score(text, "5") == 0.0

"""The rule-based math reward (`math_rule`): extract the final answer, compare with the reference.

A malformed response scores 0; scoring never raises, so one odd sample cannot crash a step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

EXTRACTORS = ("boxed", "answer_tag", "last_number")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?")  # 1,000 | 3.5 | 7/2


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: malformed


def _answer_tag(text: str) -> str | None:
    found = _ANSWER_TAG.findall(text)
    return found[-1] if found else None


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1] if found else None


_EXTRACT = {"boxed": _boxed, "answer_tag": _answer_tag, "last_number": _last_number}


def extract_answer(text: str, extractors: tuple[str, ...] = EXTRACTORS) -> str | None:
    """The first answer found by the extractors, tried in order; None when none finds one."""
    for name in extractors:
        got = _EXTRACT[name](text)
        if got is not None and got.strip():
            return got.strip()
    return None


def as_number(text: str) -> Fraction | None:
    """A numeric value for '42', '-3.5', '7/2', ' 1,000 ' (None when it is not a number)."""
    cleaned = text.replace(",", "").replace(" ", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, reference: str) -> bool:
    a, b = as_number(predicted), as_number(reference)
    if a is not None and b is not None:
        return a == b
    return predicted.strip() == reference.strip()


@dataclass
class MathRuleReward:
    extractors: tuple[str, ...] = EXTRACTORS
    correct: float = 1.0
    wrong: float = 0.0

    def score(self, response: str, reference: str) -> float:
        try:
            predicted = extract_answer(response, self.extractors)
            return self.correct if predicted is not None and answers_match(predicted, str(reference)) else self.wrong
        except Exception:  # noqa: BLE001 - a malformed sample must score 0, never crash the step
            return self.wrong

"""ROLL's multiple-choice rules: the option letter of the answer against the reference's.
`CrossThinkQARuleRewardWorker` (vroll's `crossthinkqa`) grades it by ROLL's `reward_type` (vroll's
`grading`: loose / soft / strict) plus ROLL's repetition penalty (3-grams, down to -0.5);
`MultipleChoiceBoxedRuleRewardWorker` (`choice_boxed`) and `GeneralValRuleRewardWorker`
(`choice_val`) only measure it: reward 0, right or wrong counted for accuracy."""

from __future__ import annotations

import re

# (right letter, \boxed{} used) -> reward for loose, soft, strict (ROLL's table)
GRADES = {(True, True): (1.0, 1.0, 1.0), (True, False): (1.0, 0.5, -1.0),
          (False, True): (-1.0, -0.5, -1.0), (False, False): (-1.0, -1.0, -1.0)}
GRADINGS = ("loose", "soft", "strict")
_BOXED = re.compile(r"\\boxed\{([^}]+)\}")


def choice_flags(response: str, reference: str) -> tuple[bool, bool]:
    """(right letter, boxed): the answer is the last \\boxed{} (the format), else the text after the last
    "answer is", else all of it; its first capital letter must be the reference's first character."""
    boxes = _BOXED.findall(response)
    if boxes:
        answer = boxes[-1]
    else:
        cut = response.lower().rfind("answer is")
        answer = response if cut < 0 else response[cut + len("answer is"):]
    letter = next((c for c in answer if c.isupper()), None)
    return letter is not None and letter == reference[0], bool(boxes)


def choice_reward(response: str, reference: str, grading: str) -> float:
    return GRADES[choice_flags(response, reference)][GRADINGS.index(grading)]


def special_tokens_removed(response: str) -> str:
    """The response without the special tokens ROLL's rule workers remove before reading it."""
    for junk in ("<|endoftext|>", "<pad>", "<|im_end|>"):
        response = response.replace(junk, "")
    return response


def answer_text(response: str) -> str:
    """The response without ROLL's special tokens, after the last `</think>` (newlines stripped)."""
    response = special_tokens_removed(response)
    return response[response.rfind("</think>") + len("</think>"):].lstrip("\n") if "</think>" in response else response


def repetition_penalty(text: str, n: int = 3, worst: float = -0.5) -> float:
    """`worst` times the share of repeated word n-grams (0 for a text shorter than n words)."""
    words = text.lower().split()
    grams = list(zip(*(words[i:] for i in range(n))))
    return 0.0 if not grams else worst * (1 - len(set(grams)) / len(grams))


class ChoiceRuleWorker:
    """ROLL's CrossThinkQARuleRewardWorker: grade (+1 / +0.5 / -0.5 / -1) plus the repetition penalty."""

    checks_answer = True

    def __init__(self, cfg):
        self.grading = cfg.grading

    def score(self, items) -> list[float]:
        return [self.score_one(it) for it in items]

    def score_one(self, item) -> float:
        if not item.ground_truth:
            raise ValueError("the prompt's data has no ground_truth (the option letter)")
        text = special_tokens_removed(item.response_text)
        return choice_reward(answer_text(text), item.ground_truth, self.grading) + repetition_penalty(text)


# GeneralValRuleRewardWorker scores these tags only (ROLL fails on any other)
VAL_TAGS = ("ceval", "race_high", "mmlu_pro", "commonsense_qa")


class ChoiceMeasureWorker:
    """ROLL's MultipleChoiceBoxedRuleRewardWorker (`boxed`: right only when boxed too) and
    GeneralValRuleRewardWorker (right letter, boxed or not; VAL_TAGS only): reward 0, accuracy only."""

    checks_answer = True
    reward_free = True  # the router adds nothing to the reward, and counts the score for accuracy

    def __init__(self, cfg):
        self.boxed = cfg.reward_type == "choice_boxed"

    def score(self, items) -> list[float]:
        return [self.score_one(it) for it in items]

    def score_one(self, item) -> float:
        if not item.ground_truth:
            raise ValueError("the prompt's data has no ground_truth (the option letter)")
        if not self.boxed and item.tag not in VAL_TAGS:
            raise ValueError(f"tag {item.tag!r}: ROLL's GeneralValRuleRewardWorker scores only {', '.join(VAL_TAGS)}")
        right, boxed = choice_flags(answer_text(item.response_text), item.ground_truth)
        return float(right and (boxed or not self.boxed))

"""ROLL's IFEval rule worker (`GeneralRuleRewardWorker`, vroll's `ifeval`): the row's `ground_truth` is a
JSON object naming one instruction check (`func_name`) and its arguments; the response after the last
`</think>` passes it (1) or not (0), plus ROLL's repetition penalty (3-grams, down to -0.5) on the whole
response. The checks are the 25 open-instruct IFEval functions ROLL uses, written here one small
function each under ROLL's names and argument names (no PyPI package carries this set; Google's IFEval
packages check other instruction ids and fetch nltk data at run time). Only `validate_response_language`
needs a package, `langdetect` (seeded, so a text is always read the same way)."""

from __future__ import annotations

import ast
import inspect
import json
import re

from vroll.rewards.choice_rule import answer_text, repetition_penalty, special_tokens_removed

TAG = "ifeval"  # the one data tag ROLL's worker scores


def _count_ok(actual: int, n: int, quantifier: str, around: int) -> bool:
    """at least / at most / around (within `around`) n; another quantifier fails, as in ROLL."""
    if quantifier == "at least":
        return actual >= n
    if quantifier == "at most":
        return actual <= n
    if quantifier == "around":
        return abs(actual - n) <= around
    return False


def verify_keywords(text: str, keyword_list: list) -> bool:
    """Every keyword occurs, ignoring case."""
    return all(k.lower() in text.lower() for k in keyword_list)


def verify_keyword_frequency(text: str, word: str, N: int) -> bool:
    """The word occurs exactly N times as a whole word, ignoring case (ROLL's code compares the count
    of all words instead, a slip: vroll checks what the instruction says)."""
    return re.findall(r"\b\w+\b", text.lower()).count(word.lower()) == N


def validate_forbidden_words(text: str, forbidden_words: list) -> bool:
    """No forbidden word occurs, ignoring case."""
    return not any(w.lower() in text.lower() for w in forbidden_words)


def verify_letter_frequency(text: str, letter: str, N: int) -> bool:
    """The letter (one character, case counts) occurs exactly N times."""
    if len(letter) != 1:
        raise ValueError(f"letter {letter!r} is not one character")
    return text.count(letter) == N


def validate_response_language(text: str, language: str) -> bool:
    """langdetect reads the text as `language` (an ISO 639-1 code such as 'en')."""
    return detect_language(text) == language


def verify_paragraph_count(text: str, N: int) -> bool:
    """N non-empty paragraphs separated by the markdown divider `* * *` (lines stripped first)."""
    parts = "\n".join(line.strip() for line in text.splitlines()).strip().split("* * *")
    return all(p.strip() for p in parts) and len(parts) == N


def validate_word_constraint(text: str, N: int, quantifier: str) -> bool:
    """Whitespace-separated words: at least / at most / around N (around: within 10% of N, at least 1)."""
    return _count_ok(len(text.split()), N, quantifier, max(round(N * 0.1), 1))


# a sentence ends at `.` or `?` followed by whitespace, except after an abbreviation such as "e.g." or "Mr."
_SENTENCE_END = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s")


def verify_sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    """Sentences: at least / at most / around (within 1) N."""
    return _count_ok(len(_SENTENCE_END.split(text)), N, quantifier, 1)


def validate_paragraphs(text: str, N: int, first_word: str, i: int) -> bool:
    """Exactly N paragraphs separated by a blank line ("\\n\\n"), paragraph i (from 1) starting with first_word."""
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and paragraphs[i - 1].strip().startswith(first_word)


def verify_postscript(text: str, postscript_marker: str) -> bool:
    """The marker occurs with some text after it (from its first occurrence)."""
    at = text.find(postscript_marker)
    return at >= 0 and len(text[at:].strip()) > len(postscript_marker)


def validate_placeholders(text: str, N: int) -> bool:
    """At least N placeholders in square brackets, such as [address]."""
    return len(re.findall(r"\[(.*?)\]", text)) >= N


def verify_bullet_points(text: str, N: int) -> bool:
    """Exactly N lines starting (after spaces) with `*` or `-`."""
    return sum(line.strip().startswith(("*", "-")) for line in text.split("\n")) == N


def validate_title(text: str) -> bool:
    """A title in double angular brackets, such as <<poem of joy>>."""
    return re.search(r"<<(.*?)>>", text) is not None


def validate_choice(text: str, options: list) -> bool:
    """The response is (a part of) one of the options."""
    return any(text in option for option in options)


def validate_highlighted_sections(text: str, N: int) -> bool:
    """At least N markdown-highlighted spans, *like this*."""
    return len(re.findall(r"\*(.*?)\*", text)) >= N


def validate_sections(text: str, N: int, section_splitter: str) -> bool:
    """Exactly N sections, each starting with section_splitter (text before the first one counts as one
    unless empty)."""
    sections = text.split(section_splitter)
    return len(sections) - (sections[0] == "") == N


def validate_json_format(text: str) -> bool:
    """The whole response is JSON."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validate_repeat_prompt(text: str, original_prompt: str) -> bool:
    """The response starts with the request, unchanged."""
    return text.startswith(original_prompt)


def validate_two_responses(text: str) -> bool:
    """Two different responses separated by exactly one `******`."""
    if text.count("******") != 1:
        return False
    first, second = (part.strip() for part in text.split("******"))
    return first != second


def validate_uppercase(text: str) -> bool:
    """No lowercase letter."""
    return text == text.upper()


def validate_lowercase(text: str) -> bool:
    """No uppercase letter."""
    return text == text.lower()


def validate_frequency_capital_words(text: str, N: int, quantifier: str) -> bool:
    """Words in capitals only: at least / at most / around N (around means exactly N here, as in ROLL)."""
    return _count_ok(len(re.findall(r"\b[A-Z]+\b", text)), N, quantifier, 0)


def validate_end(text: str, end_phrase: str) -> bool:
    """The response ends with the exact phrase."""
    return text.endswith(end_phrase)


def validate_quotation(text: str) -> bool:
    """The whole response is wrapped in double quotes."""
    return text.startswith('"') and text.endswith('"')


def validate_no_commas(text: str) -> bool:
    """No comma at all."""
    return "," not in text


# ROLL's func_name -> its check (ROLL's IF_FUNCTIONS_MAP)
CHECKS = {f.__name__: f for f in (
    verify_keywords, verify_keyword_frequency, validate_forbidden_words, verify_letter_frequency,
    validate_response_language, verify_paragraph_count, validate_word_constraint, verify_sentence_constraint,
    validate_paragraphs, verify_postscript, validate_placeholders, verify_bullet_points, validate_title,
    validate_choice, validate_highlighted_sections, validate_sections, validate_json_format, validate_repeat_prompt,
    validate_two_responses, validate_uppercase, validate_lowercase, validate_frequency_capital_words, validate_end,
    validate_quotation, validate_no_commas)}


class MissingPackage(RuntimeError):
    """A check's package is not installed."""


def detect_language(text: str) -> str:
    """langdetect's ISO 639-1 code for the text, the same every time (its detector seeded with 0)."""
    try:
        from langdetect import DetectorFactory, detect
    except ImportError:
        raise MissingPackage("validate_response_language needs the langdetect package (pip install "
                           "langdetect==1.0.9; requirements.txt lists it)") from None
    DetectorFactory.seed = 0
    return detect(text)


def constraint_of(ground_truth) -> dict:
    """The row's ground_truth as a dict: ROLL's JSON string, or an object (kept as a Python literal when
    the data loader wrote it with str())."""
    if isinstance(ground_truth, dict):
        return dict(ground_truth)
    try:
        value = json.loads(ground_truth)
    except ValueError:
        value = ast.literal_eval(ground_truth)
    if not isinstance(value, dict):
        raise ValueError(f"ground_truth {ground_truth!r} is not a JSON object with func_name")
    return value


def check(text: str, constraint: dict) -> bool:
    """Run the constraint's `func_name` on the text with the constraint's fields its check takes (others
    ignored, as in ROLL); a check that fails to run (a missing argument, a bad value) is not passed."""
    name = constraint.get("func_name")
    if name not in CHECKS:
        raise ValueError(f"ground_truth's func_name {name!r} is not one of ROLL's IFEval checks ({', '.join(CHECKS)})")
    func = CHECKS[name]
    params = inspect.signature(func).parameters
    args = {k: v for k, v in constraint.items() if k in params and k != "text"}
    try:
        return bool(func(text, **args))
    except MissingPackage:
        raise  # an error to see, not a failed check
    except Exception:  # noqa: BLE001 - ROLL: a check that raises is not passed
        return False


def ifeval_reward(response: str, ground_truth) -> float:
    """ROLL's GeneralRuleRewardWorker for one response: the check on the answer after the last `</think>`
    (1 or 0) plus the repetition penalty of the whole response, special tokens removed."""
    return float(check(answer_text(response), constraint_of(ground_truth))) + \
        repetition_penalty(special_tokens_removed(response))


class IfevalRuleWorker:
    """ROLL's GeneralRuleRewardWorker: rows tagged `ifeval` only (another tag is a per-sample error, scored
    0, where ROLL reuses the previous sample's result); a passed check counts as a right answer."""

    checks_answer = True

    def __init__(self, cfg=None):
        pass

    def score(self, items) -> list[float]:
        return [self.score_one(it) for it in items]

    def score_one(self, item) -> float:
        if item.tag != TAG:
            raise ValueError(f"tag {item.tag!r}: ROLL's GeneralRuleRewardWorker scores only rows tagged {TAG!r}")
        if not item.ground_truth:
            raise ValueError("the prompt's data has no ground_truth (a JSON object with func_name)")
        return ifeval_reward(item.response_text, item.ground_truth)

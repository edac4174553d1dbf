"""ROLL's math rule (`MathRuleRewardWorker`, vroll's `math_verify`): the `math-verify` library parses the
reference and the response's answer and checks that they are equal; 1 when they are, else 0.

The answer is looked for where ROLL looks: after the last `</think>`, else after the last blank line,
else nowhere (ROLL's rule, `answer_region: roll`); `answer_region: whole` reads the whole response.
"""

from __future__ import annotations

import threading

ROLL_STRIPPED = ("<|endoftext|>", "<pad>")  # ROLL removes these from the decoded prompt and response


def answer_region(response: str, prompt: str) -> str:
    """ROLL's region: text after the one `</think>`, else after the last blank line; "" when the
    thinking tags are misplaced (a `<think>` not at the start, or after a prompt that opened one)."""
    if response.count("</think>") > 1:
        return ""
    if prompt.rstrip("\n").endswith("<think>"):
        if "<think>" in response:
            return ""
    elif "<think>" in response and not response.startswith("<think>"):
        return ""
    for sep in ("</think>", "\n\n"):
        if sep in response:
            return response.rpartition(sep)[2].strip()
    return ""


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\boxed\\{...}`), braces inside double quotes not
    counted; None without one or when it is not closed."""
    start = -1
    for opener in ("\\boxed\\{", "\\boxed{"):
        start = text.rfind(opener)
        if start >= 0:
            start += len(opener)
            break
    if start < 0:
        return None
    depth, quoted = 0, False
    for i in range(start, len(text)):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "{":
            depth += 1
        elif not quoted and ch == "}":
            if depth == 0:
                return text[start:i]
            depth -= 1
    return None


def _timeouts() -> dict:
    """math-verify's own time limits use SIGALRM, which only the main thread may set."""
    main = threading.current_thread() is threading.main_thread()
    return {"parse": 5 if main else None, "verify": 5 if main else None}


def verify_math(response: str, reference: str, prompt: str = "", region: str = "roll") -> bool:
    """True when the response's answer equals the reference, as math-verify judges it."""
    from math_verify import parse, verify  # imported on first use: sympy and antlr are slow to load

    for junk in ROLL_STRIPPED:
        response, prompt = response.replace(junk, ""), prompt.replace(junk, "")
    text = answer_region(response, prompt) if region == "roll" else response
    limits = _timeouts()
    boxed = last_boxed(text)
    predicted = parse(f"${boxed}$" if boxed is not None else text, fallback_mode="no_fallback",
                      parsing_timeout=limits["parse"])
    gold = parse(f"${reference}$", parsing_timeout=limits["parse"])
    if not predicted or not gold:
        return False
    return bool(verify(gold[0], predicted[0], timeout_seconds=limits["verify"]))


class MathVerifyWorker:
    """ROLL's MathRuleRewardWorker: 1 for a right answer, 0 for a wrong, missing or unparsable one."""

    checks_answer = True

    def __init__(self, cfg):
        self.region = cfg.answer_region

    def score(self, items) -> list[float]:
        return [self.score_one(it) for it in items]

    def score_one(self, item) -> float:
        if item.ground_truth is None:
            raise ValueError("the prompt's data has no ground_truth")
        try:
            return 1.0 if verify_math(item.response_text, item.ground_truth, item.prompt_text, self.region) else 0.0
        except Exception:  # noqa: BLE001 - as ROLL: an error or a time-out is a wrong answer
            return 0.0

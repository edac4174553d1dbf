"""Synthetic arithmetic problems with verifiable answers: the offline task of the project.

Used to train the tiny model's tokenizer, and as the RL task a few-million-parameter model can learn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OPERATORS = ("+", "-", "*")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str


def make_problem(rng: random.Random, max_operand: int = 99) -> Problem:
    """One problem such as ``What is 12+7?`` with its answer ``19``."""
    op = rng.choice(OPERATORS)
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    if op == "*":
        b = rng.randint(0, 9)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return Problem(question=f"What is {a}{op}{b}?", answer=str(value))


def make_problems(n: int, seed: int, max_operand: int = 99) -> list[Problem]:
    rng = random.Random(seed)
    return [make_problem(rng, max_operand) for _ in range(n)]


def corpus_lines(n: int, seed: int) -> list[str]:
    """Plain-text lines in the formats the tiny model will see (question, worked answer)."""
    lines = []
    for p in make_problems(n, seed):
        lines.append(f"{p.question} The answer is {p.answer}.")
        lines.append(f"{p.question} <answer>{p.answer}</answer>")
    return lines

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


SYSTEM_PROMPT = "Solve the problem. Put the final answer in <answer></answer> tags."


def to_record(p: Problem, tag: str = "arithmetic") -> dict:
    """A prompt line in the shape the pipeline reads: chat messages, the reference answer, a tag
    that routes it to reward workers (`tag_included`)."""
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p.question}],
            "ground_truth": p.answer, "tag": tag}


def write_dataset(out_dir, n_train: int = 2000, n_eval: int = 200, seed: int = 0, max_operand: int = 99) -> dict:
    """train.jsonl and eval.jsonl with no question in both; returns their paths."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {"train": [], "eval": []}
    for split, n in (("eval", n_eval), ("train", n_train)):  # held-out first, so train never repeats it
        while len(splits[split]) < n:
            p = make_problem(rng, max_operand)
            if p.question not in seen:
                seen.add(p.question)
                splits[split].append(p)
    paths = {}
    for split, problems in splits.items():
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(to_record(p)) + "\n" for p in problems))
    return paths

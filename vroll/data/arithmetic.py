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


def make_problem(rng: random.Random, max_operand: int = 99, operators: str = "+-*") -> Problem:
    """One problem such as ``What is 12+7?`` with its answer ``19``; ``*`` takes a single-digit factor."""
    op = rng.choice(operators)
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


def to_record(p: Problem, tag: str = "arithmetic") -> dict:
    """A prompt line in the shape the pipeline reads: chat messages, the reference answer, a tag
    that routes it to reward workers (`tag_included`). No system prompt: the warm-up teaches the
    `<answer>` format, and a fixed preamble would only triple the tokens of every step."""
    return {"messages": [{"role": "user", "content": p.question}], "ground_truth": p.answer, "tag": tag}


def to_sft_record(p: Problem, tag: str = "arithmetic") -> dict:
    """A supervised line: the prompt's messages followed by the assistant's answer in the asked format."""
    record = to_record(p, tag)
    record["messages"].append({"role": "assistant", "content": f"<answer>{p.answer}</answer>"})
    return record


def distinct_questions(max_operand: int, operators: str) -> int:
    per_operator = {"+": (max_operand + 1) ** 2, "-": (max_operand + 1) ** 2, "*": 10 * (max_operand + 1)}
    return sum(per_operator[op] for op in set(operators))


def write_dataset(out_dir, n_train: int = 2000, n_eval: int = 200, seed: int = 0, max_operand: int = 99,
                  n_sft: int = 0, operators: str = "+-*") -> dict:
    """train.jsonl (RL prompts), eval.jsonl (held out) and, with `n_sft`, sft.jsonl (supervised
    warm-up); no question appears in two files. Returns their paths."""
    import json
    from pathlib import Path

    if not operators or set(operators) - set(OPERATORS):
        raise ValueError(f"operators = {operators!r}: use a non-empty combination of {''.join(OPERATORS)!r}")
    distinct = distinct_questions(max_operand, operators)
    if n_train + n_eval + n_sft > distinct:
        raise ValueError(f"n_train + n_eval + n_sft = {n_train + n_eval + n_sft} is more than the {distinct} distinct "
                         f"questions with max_operand={max_operand} and operators={operators!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {"train": [], "eval": [], "sft": []}
    for split, n in (("eval", n_eval), ("train", n_train), ("sft", n_sft)):  # held-out first, so train never repeats it
        while len(splits[split]) < n:
            p = make_problem(rng, max_operand, operators)
            if p.question not in seen:
                seen.add(p.question)
                splits[split].append(p)
    paths = {}
    for split, problems in splits.items():
        if not problems:
            continue
        paths[split] = out / f"{split}.jsonl"
        shape = to_sft_record if split == "sft" else to_record
        paths[split].write_text("".join(json.dumps(shape(p)) + "\n" for p in problems))
    return paths

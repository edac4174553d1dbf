"""Reading prompt files and writing result files (JSONL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vroll.config.errors import UserError
from vroll.data.jsonl import text_lines

PROMPT_KEYS = ("prompt", "messages", "prompt_token_ids")


class InputError(UserError, ValueError):
    pass


def read_prompts(path: str | Path) -> list:
    """Prompts from a JSONL file; every malformed line is reported with its number, all at once."""
    return [item for _, item in read_prompt_lines(path)]


def read_prompt_lines(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, prompt) of every prompt in a JSONL file; all malformed lines reported at once."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file not found: {path}")
    prompts, problems = [], []
    for no, line in text_lines(path):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{no}: not valid JSON ({e.msg})")
            continue
        problem = check_prompt_item(item)
        if problem:
            problems.append(f"{path}:{no}: {problem}")
        else:
            prompts.append((no, item))
    if problems:
        raise InputError("malformed prompt lines:\n" + "\n".join(f"  - {p}" for p in problems))
    if not prompts:
        raise InputError(f"{path}: no prompts")
    return prompts


def check_prompt_lines(path, lines: list[tuple[int, dict]], tokenizer, max_new_tokens: int,
                       max_model_len: int | None, overflow: str) -> None:
    """Every prompt encoded as the engine will (chat template, vocabulary) and measured against
    max_model_len (unless `overflow` skips or truncates): all problems by line, before any engine starts."""
    from vroll.strategy.prompts import PromptError, encode_prompt, prompt_room

    problems = []
    room = None if max_model_len is None else prompt_room(max_new_tokens, max_model_len)
    for no, item in lines:
        try:
            n = len(encode_prompt(no, item, tokenizer).token_ids)
        except PromptError as e:
            problems.append(f"{path}:{no}: {str(e).removeprefix(f'prompt {no}: ')}")
            continue
        if room is not None and n > room and (overflow == "error" or room < 1):
            problems.append(f"{path}:{no}: {n} tokens + max_new_tokens {max_new_tokens} > max_model_len "
                            f"{max_model_len}: shorten it, lower max_new_tokens, raise max_model_len, or pass "
                            "--overflow skip / truncate")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise InputError(f"{len(problems)} prompt(s) cannot be generated from:\n" +
                         "\n".join(f"  - {p}" for p in shown))


def check_prompt_item(item) -> str | None:
    if not isinstance(item, dict):
        return f"expected a JSON object, got {type(item).__name__}"
    keys = [k for k in PROMPT_KEYS if k in item]
    if len(keys) != 1:
        return f"expected exactly one of {', '.join(PROMPT_KEYS)}; got keys {sorted(item)}"
    value = item[keys[0]]
    if keys[0] == "prompt" and not (isinstance(value, str) and value):
        return "'prompt' must be a non-empty string"
    if keys[0] == "messages" and not (
        isinstance(value, list) and value
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value)
    ):
        return "'messages' must be a non-empty list of {\"role\": str, \"content\": str}"
    if keys[0] == "prompt_token_ids" and not (
        isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    ):
        return "'prompt_token_ids' must be a non-empty list of integers"
    return None


def write_jsonl(path: str | Path, rows) -> None:
    """Write rows to a temporary file, then rename: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)

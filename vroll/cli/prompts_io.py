"""Reading prompt files and writing result files (JSONL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vroll.config.errors import UserError

PROMPT_KEYS = ("prompt", "messages", "prompt_token_ids")


class InputError(UserError, ValueError):
    pass


def read_prompts(path: str | Path) -> list:
    """Prompts from a JSONL file; every malformed line is reported with its number, all at once."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file not found: {path}")
    prompts, problems = [], []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
            prompts.append(item)
    if problems:
        raise InputError("malformed prompt lines:\n" + "\n".join(f"  - {p}" for p in problems))
    if not prompts:
        raise InputError(f"{path}: no prompts")
    return prompts


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

"""Prompts as the engine sees them: token ids, from text, chat messages or ids, checked to fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from vroll.config.errors import UserError


@dataclass
class Prompt:
    index: int  # position in the caller's list
    token_ids: list[int]
    text: str | None = None  # the text or rendered chat, when the prompt came as text
    status: str = "ok"  # "ok", "truncated" or "skipped" (see `fit_prompts`)


class PromptError(UserError, ValueError):
    """A prompt that is malformed or cannot fit; names its index."""


def encode_prompt(index: int, item: Any, tokenizer) -> Prompt:
    """Text (str), chat messages (list of {role, content}) or token ids (list of int); or a dict
    holding one of `prompt`, `messages`, `prompt_token_ids`."""
    if isinstance(item, dict):
        keys = [k for k in ("prompt", "messages", "prompt_token_ids") if k in item]
        if len(keys) != 1:
            raise PromptError(f"prompt {index}: expected exactly one of 'prompt', 'messages', "
                              f"'prompt_token_ids', got keys {sorted(item)}")
        item = item[keys[0]]
    if isinstance(item, str):
        return Prompt(index, list(tokenizer(item)["input_ids"]), item)
    if isinstance(item, Sequence) and item and all(isinstance(m, dict) for m in item):
        if not all(isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in item):
            raise PromptError(f"prompt {index}: chat messages need string 'role' and 'content'")
        text = tokenizer.apply_chat_template(list(item), add_generation_prompt=True, tokenize=False)
        return Prompt(index, list(tokenizer(text, add_special_tokens=False)["input_ids"]), text)
    if isinstance(item, Sequence) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
        vocab = len(tokenizer)
        bad = [t for t in item if not 0 <= t < vocab]
        if bad:
            raise PromptError(f"prompt {index}: token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return Prompt(index, list(item))
    raise PromptError(f"prompt {index}: expected text, chat messages or token ids, got {type(item).__name__} "
                      f"{str(item)[:60]!r}")


def fit_prompts(prompts: list[Prompt], max_new_tokens: int, max_model_len: int, policy: str) -> list[Prompt]:
    """Apply the overflow policy to prompts with `len + max_new_tokens > max_model_len`.

    "error" raises before anything is generated; "skip" marks them skipped; "truncate" keeps the
    last tokens that fit (the end of a prompt holds the question and the generation prompt).
    """
    room = max_model_len - max_new_tokens
    too_long = [p for p in prompts if len(p.token_ids) > room]
    if not too_long:
        return prompts
    if policy == "error" or room < 1:
        p = too_long[0]
        raise PromptError(
            f"{len(too_long)} prompt(s) cannot fit; first: prompt {p.index} has {len(p.token_ids)} tokens + "
            f"max_new_tokens {max_new_tokens} > max_model_len {max_model_len}. Shorten it, lower "
            "max_new_tokens, raise max_model_len, or set strategy_config.prompt_overflow to skip/truncate"
        )
    for p in too_long:
        if policy == "skip":
            p.status = "skipped"
        else:
            p.token_ids, p.status = p.token_ids[-room:], "truncated"
    return prompts

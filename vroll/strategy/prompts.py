"""Prompts as the engine sees them: token ids, from text, chat messages or ids, checked to fit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from jinja2 import TemplateError

from vroll.config.errors import UserError
from vroll.config.templates import Template, fill_user

STANDARD_ROLES = ("system", "user", "assistant")
# A template names a role where it compares one: `message['role'] == 'tool'`, `role in ['tool', 'ipython']`.
_ROLE_COMPARED = re.compile(r"""role['"]?\]?\s*[!=]=\s*['"]([\w-]+)['"]"""
                            r"""|['"]([\w-]+)['"]\s*[!=]=\s*[\w.]*\[?['"]?role\b""")
_ROLE_LISTED = re.compile(r"""role['"]?\]?\s+(?:not\s+)?in\s+[\[(]([^\])]*)[\])]""")


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
        try:
            text = render_chat(list(item), tokenizer)
        except PromptError as e:
            raise PromptError(f"prompt {index}: {e}") from None
        return Prompt(index, list(tokenizer(text, add_special_tokens=False)["input_ids"]), text)
    if isinstance(item, Sequence) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
        vocab = len(tokenizer)
        bad = [t for t in item if not 0 <= t < vocab]
        if bad:
            raise PromptError(f"prompt {index}: token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return Prompt(index, list(item))
    raise PromptError(f"prompt {index}: expected text, chat messages or token ids, got {type(item).__name__} "
                      f"{str(item)[:60]!r}")


def template_roles(tokenizer) -> set[str]:
    """The roles the model's chat template knows: system, user, assistant, and every role it names."""
    source = tokenizer.chat_template or ""
    source = " ".join(source.values()) if isinstance(source, dict) else source
    named = {a or b for a, b in _ROLE_COMPARED.findall(source)}
    named |= {r for group in _ROLE_LISTED.findall(source) for r in re.findall(r"""['"]([\w-]+)['"]""", group)}
    return set(STANDARD_ROLES) | named


def render_chat(messages: list[dict], tokenizer, template: Template | None = None) -> str:
    """The chat as the row's template renders it (default: the model's own chat template); refuses a role
    the template does not know, and a message it would drop without a word."""
    template = template or Template("native", "model")
    messages = apply_template_text(messages, template)
    if template.render in ("chatml", "chatml_single"):
        return render_chatml(messages, single=template.render == "chatml_single")
    known = template_roles(tokenizer)
    for i, m in enumerate(messages, 1):
        if m["role"] not in known:
            raise PromptError(f"message {i} has role {m['role']!r}, which the model's chat template does not "
                              f"know; use one of {', '.join(sorted(known))}")
    extra = {"enable_thinking": True} if template.render == "model_thinking" else {}
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
    except (TemplateError, ValueError) as e:
        raise PromptError(f"the model's chat template refuses these messages: {e}") from None
    for i, m in enumerate(messages, 1):  # an assistant turn may be rewritten (reasoning removed): not checked
        if m["role"] != "assistant" and str(m.get("content", "")).strip() not in text:
            raise PromptError(f"message {i} (role {m['role']!r}) is dropped by the model's chat template; "
                              f"use one of the roles it renders")
    return text + "<think>\n" if template.render == "model_think" else text


def apply_template_text(messages: list[dict], template: Template) -> list[dict]:
    """The template's system prompt first (unless the row has its own, as ROLL's default system), and
    each user message put into its instruction."""
    out = [dict(m) for m in messages]
    if template.user is not None:
        for m in out:
            if m["role"] == "user":
                m["content"] = fill_user(template.user, str(m["content"]))
    if template.system is not None and (not out or out[0]["role"] != "system"):
        out.insert(0, {"role": "system", "content": template.system})
    return out


def render_chatml(messages: list[dict], single: bool) -> str:
    """ChatML written out (ROLL's chatml), or only one user message (ROLL's empty)."""
    if single and (len(messages) != 1 or messages[0]["role"] != "user"):
        raise PromptError(f"the template 'empty' takes exactly one user message, got roles "
                          f"{[m['role'] for m in messages]}")
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def reserved_tokens(max_new_tokens: int, max_model_len: int) -> int:
    """The response tokens a prompt must leave room for: all of max_new_tokens; or, when max_new_tokens
    reaches max_model_len (no prompt could leave that room), 1, as vLLM reads it: it ends each response
    when prompt + response reach max_model_len (finish reason length), and ROLL's files rely on that."""
    return max_new_tokens if max_new_tokens < max_model_len else 1


def prompt_room(max_new_tokens: int, max_model_len: int) -> int:
    """The most prompt tokens that fit with their response in max_model_len (the one rule every
    prompt check uses)."""
    return max_model_len - reserved_tokens(max_new_tokens, max_model_len)


def fit_prompts(prompts: list[Prompt], max_new_tokens: int, max_model_len: int, policy: str) -> list[Prompt]:
    """Apply the overflow policy to prompts with `len + reserved_tokens(...) > max_model_len`.

    "error" raises before anything is generated; "skip" marks them skipped; "truncate" keeps the
    last tokens that fit (the end of a prompt holds the question and the generation prompt).
    """
    room = prompt_room(max_new_tokens, max_model_len)
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

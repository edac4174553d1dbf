"""Prompt files for training and validation: JSONL records read and tokenized before any engine
starts, and a sampler whose order is a pure function of (seed, epoch) so a resumed run sees the
same prompts as an uninterrupted one."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vroll.config.domains import KEY as DOMAINS_KEY
from vroll.config.domains import domain_batch_sizes, interleaved, row_domain, tag_domains
from vroll.config.errors import ConfigError, Issue
from vroll.config.schema import DataArgs
from vroll.config.templates import TemplateChoice, choose_templates
from vroll.data.jsonl import text_lines
from vroll.strategy.prompts import render_chat

log = logging.getLogger(__name__)


@dataclass
class PromptRecord:
    index: int
    prompt_ids: list[int]
    prompt_text: str
    ground_truth: str | None = None
    tag: str | None = None
    response: str | None = None  # the assistant's answer, for supervised warm-up
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line", for messages
    template: str | None = None  # the template that rendered its messages (None: a plain prompt, as written)


def data_files(data_args: DataArgs | None) -> list[Path]:
    if data_args is None or not data_args.file_name:
        return []
    names = data_args.file_name if isinstance(data_args.file_name, list) else [data_args.file_name]
    return [Path(n).expanduser() for n in names]


def load_prompts(data_args: DataArgs, tokenizer, prompt_length: int, key: str,
                 with_response: bool = False, templates: TemplateChoice | None = None) -> list[PromptRecord]:
    """Every record of the files, tokenized after its template renders it (`templates`, by the row's
    tag; default: the model's chat template).

    A line has chat `messages` (field named by `data_args.messages`) or a plain `prompt` (field named
    by `data_args.prompt`, sent as written), and optionally `ground_truth` and `tag`. With `with_response` the last
    message must be the assistant's answer, which becomes the supervised target. Prompts longer than
    `prompt_length` tokens are dropped with a warning, as peers do.
    """
    messages_key, prompt_key = data_args.messages or "messages", data_args.prompt or "prompt"
    records, issues, too_long = [], [], 0
    for path in data_files(data_args):
        for lineno, line in text_lines(path):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a line must be a JSON object")
                rec = _to_record(row, len(records), tokenizer, messages_key, prompt_key, with_response, templates)
                rec.source = where
            except (ValueError, KeyError, TypeError) as e:
                issues.append(Issue(f"{key}.file_name", f"{where}: {e}"))
                if len(issues) >= 10:
                    break
                continue
            if len(rec.prompt_ids) > prompt_length:
                too_long += 1
                continue
            records.append(rec)
    if issues:
        raise ConfigError(issues)
    if too_long:
        log.warning("%s: %d prompts longer than prompt_length=%d tokens were dropped", key, too_long, prompt_length)
    if not records:
        raise ConfigError([Issue(f"{key}.file_name", f"no usable prompts (dropped {too_long} longer than "
                                                     f"prompt_length={prompt_length})")])
    return records


def _to_record(row: dict, index: int, tokenizer, messages_key: str, prompt_key: str,
               with_response: bool, templates: TemplateChoice | None) -> PromptRecord:
    response, template = None, None
    if messages_key in row:
        messages = row[messages_key]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError(f"{messages_key!r} must be a list of {{role, content}} messages")
        if with_response:
            if not messages or messages[-1]["role"] != "assistant":
                raise ValueError(f"{messages_key!r}: the last message must be the assistant's answer")
            messages, response = messages[:-1], messages[-1]["content"]
        template = templates.for_tag(row.get("tag")) if templates is not None else None
        text = render_chat(messages, tokenizer, template)
    elif prompt_key in row:
        text = str(row[prompt_key])
        if with_response:
            if "response" not in row:
                raise ValueError("a supervised line needs 'response' next to the prompt")
            response = str(row["response"])
    else:
        raise ValueError(f"neither {messages_key!r} nor {prompt_key!r} in the line")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    truth = row.get("ground_truth")
    return PromptRecord(index=index, prompt_ids=ids, prompt_text=text,
                        ground_truth=None if truth is None else str(truth), tag=row.get("tag"), response=response,
                        template=None if template is None else template.name,
                        extra={k: v for k, v in row.items() if k not in (messages_key, prompt_key, "ground_truth", "tag")})


def row_templates(cfg, source: str | None = None) -> TemplateChoice:
    """The file's template choice (config/templates.py); its problems raised at once."""
    choice, issues = choose_templates(cfg)
    if issues:
        raise ConfigError(issues, source)
    return choice


def describe_first_prompt(records: list[PromptRecord], key: str, templates: TemplateChoice | None) -> str:
    """What the model sees for the first row, and which template (and key) made it: logged at start."""
    rec = records[0]
    if rec.template is None:
        how = "a plain prompt, sent as written"
    else:
        how = f"template {rec.template!r}" + (f" from {templates.key_for(rec.tag)}" if templates is not None else "")
    return f"{key}: the model sees row 1 ({rec.source}, {how}) as:\n{rec.prompt_text}"


def plain_rows_warning(records: list[PromptRecord], key: str, templates: TemplateChoice | None) -> str | None:
    """A warning when a template is set and some rows are plain prompts, which no template touches (ROLL's rule)."""
    plain = sum(r.template is None for r in records)
    if not plain or templates is None or templates.source == "default" and not templates.by_tag:
        return None
    return (f"{key}: {plain} of {len(records)} rows have a plain prompt, which templates do not change (as in ROLL); "
            "give them `messages` to use the template")


class PromptSampler:
    """Batches in a shuffled order, reshuffled each epoch; the order depends only on (seed, epoch)."""

    def __init__(self, records: list[PromptRecord], seed: int | str):
        self.records, self.seed = records, seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, size: int) -> list[PromptRecord]:
        batch = []
        while len(batch) < size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle(self.epoch)
            batch.append(self.records[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffle(self.epoch)


class DomainSampler:
    """ROLL's `domain_interleave_probs`: each domain's rows in an order of their own (a PromptSampler
    seeded by (seed, domain)), and a batch of `batch_size` prompts takes `domain_batch_size` of them from
    each domain, domain after domain as ROLL concatenates them. Any other draw (dynamic sampling's
    extra prompts, replaced groups) takes single prompts from the domains in `interleaved` order, so
    those keep the shares too. The state is each domain's (epoch, position) and the extra draws' count."""

    def __init__(self, records: list[PromptRecord], seed: int, probs: dict[str, float], batch_size: int,
                 domain_of):
        self.batch_size, self.sizes = batch_size, domain_batch_sizes(probs, batch_size)
        self.samplers = {d: PromptSampler([r for r in records if domain_of(r) == d], f"{seed}:{d}") for d in probs}
        self._cycle, self.extra = interleaved(self.sizes), 0

    @property
    def epoch(self) -> int:
        """Full passes over every domain's rows (the slowest domain's epoch)."""
        return min(s.epoch for s in self.samplers.values())

    def next_batch(self, size: int) -> list[PromptRecord]:
        if size == self.batch_size:
            return [r for d, n in self.sizes.items() for r in self.samplers[d].next_batch(n)]
        batch = []
        for _ in range(size):
            batch += self.samplers[self._cycle[self.extra % len(self._cycle)]].next_batch(1)
            self.extra += 1
        return batch

    def state_dict(self) -> dict:
        return {"domains": {d: s.state_dict() for d, s in self.samplers.items()}, "extra": self.extra}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("domains")
        if saved is None or set(saved) != set(self.samplers):
            was = sorted(saved) if saved is not None else "none (one shuffled order over all rows)"
            raise ConfigError([Issue(DOMAINS_KEY, f"the checkpoint was saved with domains {was}, this run has "
                                                  f"{sorted(self.samplers)}: resume with the same domains")])
        for d, s in self.samplers.items():
            s.load_state_dict(saved[d])
        self.extra = int(state.get("extra", 0))


def prompt_sampler(records: list[PromptRecord], seed: int, data_args: DataArgs, batch_size: int,
                   rewards: dict) -> PromptSampler | DomainSampler:
    """The training prompts' sampler: per-domain shares when `domain_interleave_probs` is set."""
    probs = data_args.domain_interleave_probs
    if not probs:
        return PromptSampler(records, seed)
    tags = tag_domains(rewards)
    return DomainSampler(records, seed, probs, batch_size, lambda r: record_domain(r, tags))


def record_domain(record: PromptRecord, tags: dict[str, str]) -> str:
    return row_domain(record.extra.get("domain"), record.tag, tags)


def domain_issues(records: list[PromptRecord], data_args: DataArgs, batch_size: int, rewards: dict) -> list[Issue]:
    """Before anything starts: every listed domain has rows, at least its batch share of them (else a
    step would repeat prompts; ROLL asserts the same), and rows no listed domain takes are named."""
    probs = data_args.domain_interleave_probs
    if not probs:
        return []
    tags = tag_domains(rewards)
    counts = Counter(record_domain(r, tags) for r in records)
    issues = []
    for name, n in domain_batch_sizes(probs, batch_size).items():
        if not counts.get(name):
            issues.append(Issue(f"{DOMAINS_KEY}.{name}", f"no row of actor_train.data_args is in domain {name!r} "
                                f"(domains the rows have: {dict(sorted(counts.items()))}); a row's domain is its "
                                "`domain` field, else the reward worker whose tag_included lists its `tag`, else "
                                "'math_rule', as in ROLL"))
        elif counts[name] < n:
            issues.append(Issue(f"{DOMAINS_KEY}.{name}", f"{probs[name]} of rollout_batch_size={batch_size} is {n} "
                                f"prompts a step, more than the domain's {counts[name]} rows: every step would "
                                "repeat prompts; lower the share or add rows"))
    unused = {d: n for d, n in counts.items() if d not in probs}
    if unused:
        log.warning("%s: %d row(s) of domain(s) %s are never drawn (not listed; as in ROLL)", DOMAINS_KEY,
                    sum(unused.values()), sorted(unused))
    return issues

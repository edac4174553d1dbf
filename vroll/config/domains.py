"""ROLL's `actor_train.data_args.domain_interleave_probs`: the share of each domain in a step's
batch. The rules live here once: which domain a row belongs to, how many prompts each domain gives a
batch (ROLL's rounding), and what the file may say.

A domain is named like a reward worker (`rewards.<name>`). A row's domain is its `domain` field, else
the worker whose `tag_included` lists its `tag` (the last such worker, as ROLL builds its map), else
`math_rule`: ROLL's `update_dataset_domain`. Rows of a domain the key does not list are never drawn,
as in ROLL.

The reward workers that score a row (`reward_routes`) follow from the same rule: ROLL sends each row
to the one worker its domain names (rlvr_pipeline.py: one reward cluster per domain). vroll keeps that
wherever a file can mean it, and keeps its own sum of weighted scores where a file asks for more than
ROLL can give, each such place named by `routing_notes` (a `# note:` of `vroll validate`):
- a row with a `domain` field goes to that worker only;
- else the workers whose `tag_included` lists its tag: one worker, ROLL's rule; a tag listed under
  several workers goes to each of them and their weighted scores are summed (ROLL scores it with the
  last one only), as vroll's `format` worker beside `math` does;
- a worker with no `tag_included` takes every row without a `domain` field besides (vroll's; ROLL gives
  it only rows whose `domain` names it);
- a row whose tag no worker lists goes to the `math_rule` worker when there is one (ROLL's default
  domain); with none it has no worker, which is refused before anything starts where the row would be
  scored."""

from __future__ import annotations

import math
from typing import Any, Mapping

from vroll.config.errors import Issue

KEY = "actor_train.data_args.domain_interleave_probs"
DEFAULT_DOMAIN = "math_rule"  # ROLL's domain of a row whose tag no reward worker lists


def tag_domains(rewards: Mapping[str, Any]) -> dict[str, str]:
    """tag -> domain from the reward workers' `tag_included` (a later worker wins a shared tag, as in ROLL)."""
    return {tag: name for name, worker in rewards.items() for tag in getattr(worker, "tag_included", []) or []}


def row_domain(domain: Any, tag: str | None, tags: Mapping[str, str]) -> str:
    """A row's domain: its own `domain` field, else its tag's worker, else `math_rule`."""
    if domain is not None:
        return str(domain)
    return tags.get(tag, DEFAULT_DOMAIN) if tag is not None else DEFAULT_DOMAIN


def reward_routes(rewards: Mapping[str, Any], tag: str | None, domain: Any = None) -> list[str]:
    """The reward workers that score a row with this tag and `domain` field, in the file's order (see
    the module's rule); [] when none does."""
    if domain is not None:
        return [str(domain)] if str(domain) in rewards else []
    everything = [n for n, w in rewards.items() if not (getattr(w, "tag_included", None) or [])]
    listed = [n for n, w in rewards.items() if tag is not None and tag in (getattr(w, "tag_included", None) or [])]
    if not listed and DEFAULT_DOMAIN in rewards:
        listed = [DEFAULT_DOMAIN]
    return [n for n in rewards if n in listed or n in everything]


def routing_notes(rewards: Mapping[str, Any]) -> dict[str, str]:
    """Where vroll's routing gives a row more workers than ROLL would (path -> what vroll does)."""
    notes = {}
    listing: dict[str, list[str]] = {}
    for name, worker in rewards.items():
        for tag in dict.fromkeys(getattr(worker, "tag_included", None) or []):
            listing.setdefault(tag, []).append(name)
    for tag, names in listing.items():
        if len(names) > 1:
            notes[f"rewards.*.tag_included.{tag}"] = (
                f"tag {tag!r} is listed under {', '.join(names)}: vroll scores its rows with each and sums their "
                f"weighted scores (ROLL scores them with the last, {names[-1]}, only; list the tag under one worker "
                "for ROLL's meaning)")
    if len(rewards) > 1:
        for name, worker in rewards.items():
            if not (getattr(worker, "tag_included", None) or []):
                notes[f"rewards.{name}.tag_included"] = (
                    f"empty: vroll gives {name} every row without a `domain` field, beside the row's own worker "
                    f"(ROLL gives it only rows whose `domain` is {name!r}"
                    + (", and rows whose tag no worker lists" if name == DEFAULT_DOMAIN else "")
                    + "; list its tags for ROLL's meaning)")
    return notes


def domain_batch_sizes(probs: Mapping[str, float], batch_size: int) -> dict[str, int]:
    """Prompts each domain gives a batch, ROLL's rule: int(p * batch_size) (rounded down) for every
    domain but the last, which takes the rest, so the batch is always full."""
    sizes, names = {}, list(probs)
    for i, name in enumerate(names):
        sizes[name] = batch_size - sum(sizes.values()) if i == len(names) - 1 else int(probs[name] * batch_size)
    return sizes


def interleaved(sizes: Mapping[str, int]) -> list[str]:
    """One batch's domains spread evenly (slot k of a domain with n slots sits at (k + 0.5) / n): the
    order in which single extra prompts (dynamic sampling, replaced groups) are drawn, so any run of
    them keeps each domain's share."""
    slots = [((k + 0.5) / n, i, name) for i, (name, n) in enumerate(sizes.items()) for k in range(n)]
    return [name for _, _, name in sorted(slots)]


def check_domain_probs(probs: Mapping[str, float] | None, rewards: Mapping[str, Any],
                       batch_size: int) -> list[Issue]:
    """The key's values before anything starts: named domains that are reward workers, finite shares
    from 0 to 1, and shares that leave the last domain a batch size of zero or more."""
    if probs is None:
        return []
    if not probs:
        return [Issue(KEY, "{}: name at least one domain with its share, e.g. {math_rule: 1.0}, or leave the key "
                           "out")]
    issues = []
    for name, p in probs.items():
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not math.isfinite(p) or not 0 <= p <= 1:
            issues.append(Issue(f"{KEY}.{name}", f"{p!r}: a domain's share of the batch is a finite number from 0 to 1"))
    if rewards:
        unknown = [n for n in probs if n not in rewards]
        if unknown:
            issues.append(Issue(KEY, f"{unknown}: not reward workers; each domain is named like its reward worker "
                                     f"(rewards.<name>), as in ROLL; allowed: {sorted(rewards)}"))
    if issues:
        return issues
    sizes = domain_batch_sizes(probs, batch_size)
    last = list(sizes)[-1]
    if sizes[last] < 0:
        issues.append(Issue(KEY, f"{dict(probs)}: the domains before {last!r} take {batch_size - sizes[last]} of "
                                 f"rollout_batch_size={batch_size} prompts, leaving {sizes[last]} for {last!r}, "
                                 "which takes the rest as in ROLL; make the shares sum to 1"))
    return issues


def domain_warnings(cfg) -> list[str]:
    """Shares that do not sum to 1 (ROLL then gives the last domain whatever the others leave), and the
    key set where nothing reads it (ROLL reads actor_train's only)."""
    out = []
    for path, section in [(f"{name}.data_args", role.data_args) for name, role in cfg.roles().items()] + \
            [("validation.data_args", getattr(cfg.validation, "data_args", None))]:
        if path != "actor_train.data_args" and getattr(section, "domain_interleave_probs", None) is not None:
            out.append(f"{path}.domain_interleave_probs: has no effect; the batch's domain shares are read from "
                       f"{KEY} only (as in ROLL)")
    probs = cfg.actor_train.data_args.domain_interleave_probs \
        if cfg.actor_train is not None and cfg.actor_train.data_args is not None else None
    if not probs or abs(sum(probs.values()) - 1) <= 1e-6:
        return out
    sizes = domain_batch_sizes(probs, cfg.rollout_batch_size)
    last = list(sizes)[-1]
    return out + [f"{KEY}: the shares sum to {sum(probs.values()):g}, not 1; as in ROLL the last domain {last!r} "
                  f"takes the rest of each batch ({sizes[last]} of {cfg.rollout_batch_size} prompts)"]

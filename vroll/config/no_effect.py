"""ROLL keys that vroll accepts and that change nothing here, each with the reason: a file that sets
one is told so in one warning line (by `vroll validate` and at the start of a run), never silently."""

from __future__ import annotations

# top-level keys
NO_EFFECT = {
    "mask_type": "ROLL declares it and never reads it",
    "add_len_reward": "ROLL declares it and never reads it",
    "use_reward_scaling": "ROLL declares it and never reads it",
    "use_reward_norm": "ROLL declares it and never reads it",
}
# keys of each reward worker
REWARD_NO_EFFECT = {
    "response_filter_config": "ROLL never applies it (query_filter_config is the one that filters)",
    "response_length_penalty_coef": "only ROLL's crossthinkqa worker reads it; vroll's workers have no length "
                                    "penalty",
}


def no_effect_keys(cfg) -> dict[str, str]:
    """The keys the file sets that have no effect here, with why."""
    found = {k: why for k, why in NO_EFFECT.items() if k in cfg.model_fields_set}
    for name, worker in cfg.rewards.items():
        found.update({f"rewards.{name}.{k}": why for k, why in REWARD_NO_EFFECT.items() if k in worker.model_fields_set})
    return found


def no_effect_line(cfg) -> str | None:
    """One warning line naming them, or None."""
    found = no_effect_keys(cfg)
    if not found:
        return None
    return "accepted, no effect here: " + "; ".join(f"{k} ({why})" for k, why in found.items())

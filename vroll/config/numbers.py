"""Numbers in the file: non-finite values are errors (typed keys refuse them in `schema.py`; this
checks the untyped `strategy_config`), and values far outside the usual range are warnings, since
where the range ends is a judgement."""

from __future__ import annotations

import math

from vroll.config.errors import Issue

# dotted key (roles' keys under each role) -> (highest usual value, what usually happens above it)
USUAL_MAX = {
    "training_args.learning_rate": (1e-2, "usual values are 1e-7 to 1e-3; training will likely diverge into NaN"),
    "training_args.weight_decay": (1.0, "usual values are 0 to 0.1"),
    "generating_args.temperature": (5.0, "sampling at this temperature is close to uniform noise"),
    "kl_loss_coef": (10.0, "the KL term will dominate the policy loss"),
    "init_kl_coef": (10.0, "the KL penalty will dominate the reward"),
    "entropy_loss_coef": (1.0, "the entropy bonus will dominate the policy loss"),
}


def nonfinite_issues(value, path: str) -> list[Issue]:
    """An issue for every NaN or infinite float in a nested dict / list."""
    if isinstance(value, float) and not math.isfinite(value):
        return [Issue(path, f"{value!r} is not a finite number: give a finite value")]
    if isinstance(value, dict):
        return [i for k, v in value.items() for i in nonfinite_issues(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [i for n, v in enumerate(value) for i in nonfinite_issues(v, f"{path}[{n}]")]
    return []


def range_warnings(cfg) -> list[str]:
    """'key: value is far above ...' for every value beyond its usual maximum."""
    out = []
    sections = {"": cfg, **{f"{name}.": role for name, role in cfg.roles().items()}}
    for key, (high, why) in USUAL_MAX.items():
        for prefix, section in sections.items():
            value = _get(section, key)
            if isinstance(value, (int, float)) and value > high:
                out.append(f"{prefix}{key}: {value:g} is far above the usual maximum {high:g} ({why})")
    return out + idle_policy_warnings(cfg)


def idle_policy_warnings(cfg) -> list[str]:
    """A warning when the policy's loss is 0 by its coefficients (`rl_loss_coef: 0` without an entropy
    bonus, as ROLL's TOPR example sets): the run goes on, and the policy never changes."""
    if getattr(cfg, "rl_loss_coef", 1.0) == 0 and getattr(cfg, "entropy_loss_coef", 0.0) == 0:
        return ["rl_loss_coef: 0 with entropy_loss_coef 0 makes the policy's loss 0 (ROLL's meaning: it scales "
                "the policy and KL terms): the policy will not change"]
    return []


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj

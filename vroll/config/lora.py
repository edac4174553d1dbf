"""ROLL's LoRA keys (`model_args`: LoraArguments), read as ROLL reads them: `actor_train.model_args.
lora_target` turns LoRA on; the trainer then wraps its model with peft's LoRA adapters of
`lora_rank` and `lora_alpha` (default 2 x rank, ROLL's) and trains only them (and the
`additional_target` modules). The engine receives the merged weights (base + alpha/rank * B A)
under the base model's names, so vLLM runs no LoRA of its own; the reference is the trainer's model
with its adapters off (ROLL's rule: no reference model is started). What the names match is checked
against the model itself before anything starts (`vroll.models.lora`)."""

from __future__ import annotations

import re

from vroll.config.errors import Issue

# a lora_target with one of these characters is one regular expression (ROLL's rule), matched by
# peft against each module's full name; otherwise a comma-separated list of names
REGEX_CHARS = ("*", "$", "|", "(")
ALL_LINEAR = "all-linear"  # every Linear layer but the output layer (peft's meaning)
REFUSED_SHORTHANDS = {
    "all-embedding": "LoRA on embeddings is not in vroll (it adapts Linear layers); list them in "
                     "additional_target to train them whole",
    "all-router": "LoRA on MoE routers is not in vroll (it adapts Linear layers)",
}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def split_names(value) -> list[str] | None:
    """A comma-separated string (or a list) of names as a list; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items]


def parse_target(value) -> list[str] | str | None:
    """ROLL's `lora_target`: a regular expression (kept whole) or a list of module names."""
    if value is None:
        return None
    if isinstance(value, str) and any(c in value for c in REGEX_CHARS):
        return value
    return split_names(value)


def target_problem(value) -> str | None:
    """Why a `lora_target` value cannot be read (None when it can), naming the value and what is allowed."""
    target = parse_target(value)
    if target is None:
        return None
    if isinstance(target, str):
        try:
            re.compile(target)
        except re.error as e:
            return f"{value!r} is not a valid regular expression ({e})"
        return None
    for name in target:
        if name in REFUSED_SHORTHANDS:
            return f"{name!r} is not supported: {REFUSED_SHORTHANDS[name]}"
        if name != ALL_LINEAR and not NAME.match(name):
            return (f"{value!r}: {name!r} is not a module name; give comma-separated module names (q_proj,v_proj), "
                    f"{ALL_LINEAR}, or one regular expression")
    return None


def matches(module: str, name: str) -> bool:
    """peft's rule for one name of a list: the module's full name, or its last dotted parts."""
    return module == name or module.endswith("." + name)


def adapted(module: str, target, output: str | None = None, linear: bool = True) -> bool:
    """Whether `module` (a full name) gets an adapter under the parsed `target` (`parse_target`):
    the regex matches it whole, or a name matches it, or all-linear and it is a Linear layer other
    than the output layer `output`."""
    if isinstance(target, str):
        return re.fullmatch(target, module) is not None
    return any(matches(module, t) for t in target if t != ALL_LINEAR) or \
        (ALL_LINEAR in target and linear and module != output)


def trainable_parameters(shapes: dict[str, list[int]], model_args) -> int:
    """About how many parameters LoRA trains in a model whose tensors have `shapes` (safetensors
    names): rank x (in + out) per adapted 2-D weight (all-linear: every one but the embeddings and
    the output layer), plus the additional_target modules whole."""
    target = parse_target(model_args.lora_target)
    whole = split_names(model_args.additional_target) or []
    total = 0
    for name, shape in shapes.items():
        module, _, param = name.rpartition(".")
        if any(module.endswith(w) for w in whole):
            total += _numel(shape)
        elif param == "weight" and len(shape) == 2 and "embed" not in module and \
                adapted(module, target, output="lm_head"):
            total += model_args.lora_rank * (shape[0] + shape[1])
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def names_problem(value, key: str) -> str | None:
    """Why an `additional_target` value cannot be read."""
    for name in split_names(value) or []:
        if not NAME.match(name):
            return f"{value!r}: {name!r} is not a module name; give comma-separated module names ({key})"
    return None


def lora_on(role) -> bool:
    """Whether this role's model_args turn LoRA on (only actor_train's are read: `lora_enabled`)."""
    return role is not None and role.model_args.lora_target is not None


def lora_enabled(cfg) -> bool:
    """ROLL's `is_lora_training`: actor_train.model_args.lora_target is set."""
    return lora_on(getattr(cfg, "actor_train", None))


def lora_alpha(model_args) -> int:
    """ROLL's default: `lora_alpha or lora_rank * 2`."""
    return model_args.lora_alpha or model_args.lora_rank * 2


def lora_issues(cfg) -> list[Issue]:
    """The roles where vroll does not read LoRA: a critic with LoRA is refused (vroll's critic trains
    every weight)."""
    critic = getattr(cfg, "critic", None)
    if lora_on(critic):
        return [Issue("critic.model_args.lora_target", f"{critic.model_args.lora_target!r} is not supported: LoRA "
                                                       "on the critic is not in vroll (its value model trains every "
                                                       "weight); remove it")]
    return []

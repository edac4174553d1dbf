"""LoRA on a transformers model with peft (ROLL's keys: `config/lora.py`): the names checked against
the model's own layers, the adapters put in place, the merged weights (base + alpha/rank * B A)
under the base model's names for the engine and checkpoints, and the adapter on disk in peft's
format (`adapter_config.json` + `adapter_model.safetensors`, no pickle)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vroll.config.errors import CheckpointError, ConfigError, Issue
from vroll.config.lora import ALL_LINEAR, adapted, lora_alpha, lora_on, matches, parse_target, split_names
from vroll.models.gguf import converted_folder, is_converted, is_gguf
from vroll.models.paths import cached_snapshot

PEFT_PREFIX = "base_model.model."
ADAPTER_DIR = "adapter"  # a checkpoint's adapter, beside the merged model
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


# -- the names, checked against the model -------------------------------------------------------
def model_skeleton(folder: str | Path, trust_remote_code: bool = False):
    """The model's modules without its weights (on the meta device): enough to check names."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def output_layer_name(model) -> str | None:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((n for n, m in model.named_modules() if m is out), None) if out is not None else None


def tied(model) -> bool:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


def target_issues(prefix: str, model_args, model) -> list[Issue]:
    """What in `lora_target` / `additional_target` (under `prefix`, e.g. "actor_train.model_args") does
    not fit `model`: a name that matches no module, or modules that are not Linear layers, or the output
    layer of a model that ties it to its input embedding. Each issue names the key, the value and the
    model's Linear layers (what is allowed)."""
    modules = {n: m for n, m in model.named_modules() if n}
    linear = {n for n, m in modules.items() if isinstance(m, torch.nn.Linear)}
    output = output_layer_name(model)
    is_tied = tied(model)
    short = sorted({n.rsplit(".", 1)[-1] for n in linear if not (is_tied and n == output)})
    allowed = f"the model's Linear layers are {', '.join(short)}"
    value = model_args.lora_target
    key = f"{prefix}.lora_target"
    target = parse_target(value)
    issues: list[Issue] = []
    if target is None:
        return issues
    if isinstance(target, str):
        matched = {target: [n for n in modules if re.fullmatch(target, n)]}
    else:
        matched = {name: [n for n in modules if matches(n, name)] for name in target if name != ALL_LINEAR}
    for name, found in matched.items():
        if not found:
            issues.append(Issue(key, f"{value!r}: {name!r} matches no module of the model ({allowed}; or "
                                     f"{ALL_LINEAR})"))
            continue
        others = sorted({type(modules[n]).__name__ for n in found if n not in linear})
        if others:
            issues.append(Issue(key, f"{value!r}: {name!r} matches {', '.join(others)} modules, which are not "
                                     f"Linear layers: vroll's LoRA adapts Linear layers ({allowed})"))
        elif is_tied and output in found:
            issues.append(Issue(key, f"{value!r}: {name!r} matches the output layer {output}, which this model ties "
                                     "to its input embedding (tie_word_embeddings): the merged weights could not be "
                                     "tied again; leave it out"))
    issues += additional_issues(prefix, model_args, model, modules, output, is_tied, lora_modules(model_args, model))
    return issues


def lora_modules(model_args, model) -> set[str]:
    """The full names of the modules the adapters go on (peft's rules for lora_target)."""
    target = parse_target(model_args.lora_target)
    output = output_layer_name(model)
    return {n for n, m in model.named_modules() if n and target is not None
            and adapted(n, target, output, isinstance(m, torch.nn.Linear))}


def additional_issues(prefix: str, model_args, model, modules: dict, output: str | None, is_tied: bool,
                      adapted: set[str]) -> list[Issue]:
    """`additional_target` (peft's modules_to_save, matched as peft does: the name's end)."""
    value, key = model_args.additional_target, f"{prefix}.additional_target"
    issues = []
    embedding = next((n for n, m in model.named_modules() if m is model.get_input_embeddings()), None)
    for name in split_names(value) or []:
        found = [n for n in modules if n.endswith(name)]
        if not found:
            issues.append(Issue(key, f"{value!r}: {name!r} matches no module of the model"))
        elif is_tied and ({output, embedding} & set(found)):
            issues.append(Issue(key, f"{value!r}: {name!r} matches {output if output in found else embedding}, "
                                     "which this model ties to the other end (tie_word_embeddings): training one "
                                     "copy would untie them"))
        elif any(a == n or a.startswith(n + ".") for n in found for a in adapted):
            issues.append(Issue(key, f"{value!r}: {name!r} holds layers lora_target adapts; a module is either "
                                     "adapted or trained whole"))
    return issues


def folder_target_issues(prefix: str, model_args, folder: str | Path) -> list[Issue]:
    """`target_issues` against the model in a local folder, built without its weights."""
    try:
        model = model_skeleton(folder, model_args.trust_remote_code)
    except Exception as e:  # the folder's own problems are reported by models/folder.py
        return [Issue(f"{prefix}.lora_target", f"cannot check the names against {folder}: {type(e).__name__}: {e}")]
    return target_issues(prefix, model_args, model)


def config_target_issues(cfg) -> list[Issue]:
    """actor_train's LoRA names against its model, when that is a local folder (or a cached id, or a
    converted GGUF file); other models are checked when the trainer loads them."""
    role = getattr(cfg, "actor_train", None)
    if not lora_on(role):
        return []
    name = role.model_args.model_name_or_path or ""
    if is_gguf(name):
        folder = converted_folder(Path(name).expanduser()) if Path(name).expanduser().is_file() else None
        folder = folder if folder is not None and is_converted(folder) else None
    else:
        folder = Path(name).expanduser() if Path(name).expanduser().is_dir() else cached_snapshot(name)
    if folder is None or not (Path(folder) / "config.json").is_file():
        return []
    return folder_target_issues("actor_train.model_args", role.model_args, folder)


# -- the adapters ------------------------------------------------------------------------------
def peft_target(model_args, model):
    """peft's target_modules for ROLL's lora_target: the regex, peft's "all-linear" (every Linear layer
    but the output layer), or the names (all-linear among names: every module it stands for)."""
    target = parse_target(model_args.lora_target)
    if isinstance(target, str):
        return target
    if target == [ALL_LINEAR]:
        return ALL_LINEAR
    return sorted(lora_modules(model_args, model)) if ALL_LINEAR in target else sorted(set(target))


def with_adapters(model, model_args, where: str = "actor_train.model_args"):
    """`model` wrapped with peft's LoRA adapters (fresh: A random, B zero, so the model is unchanged),
    only the adapters (and additional_target) trainable. Names that do not fit are a ConfigError."""
    from peft import LoraConfig, TaskType, get_peft_model

    issues = target_issues(where, model_args, model)
    if issues:
        raise ConfigError(issues)
    config = LoraConfig(r=model_args.lora_rank, lora_alpha=lora_alpha(model_args),
                        lora_dropout=model_args.lora_dropout, target_modules=peft_target(model_args, model),
                        modules_to_save=split_names(model_args.additional_target), task_type=TaskType.CAUSAL_LM)
    return get_peft_model(model, config)


@dataclass
class Export:
    """One weight of the base model's state dict, as the engine receives it: `key` in the adapted
    model's state dict, plus the adapter's A and B keys and scale where LoRA adapts it."""

    name: str
    key: str
    a: str | None = None
    b: str | None = None
    scaling: float = 0.0


def export_plan(peft_model, base_names: list[str]) -> list[Export]:
    """How each of the base model's weights (`base_names`, its state dict's keys in order) is made
    from the adapted model's state dict: as it is, the trained copy of an additional_target module,
    or the base weight merged with its adapter."""
    from peft.tuners.lora import LoraLayer

    keys = set(peft_model.state_dict())
    layers = {n.removeprefix(PEFT_PREFIX): m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    plan = []
    for name in base_names:
        module, _, param = name.rpartition(".")
        layer = layers.get(module)
        if layer is not None:
            key = f"{PEFT_PREFIX}{module}.base_layer.{param}"
            if param == "weight":
                plan.append(Export(name, key, f"{PEFT_PREFIX}{module}.lora_A.default.weight",
                                   f"{PEFT_PREFIX}{module}.lora_B.default.weight", float(layer.scaling["default"])))
                continue
            plan.append(Export(name, key))
            continue
        trained = f"{PEFT_PREFIX}{module}.modules_to_save.default.{param}"
        plan.append(Export(name, trained if trained in keys else PEFT_PREFIX + name))
    missing = [e.key for e in plan if e.key not in keys] + [k for e in plan for k in (e.a, e.b) if k and k not in keys]
    if missing:
        raise RuntimeError(f"LoRA: the adapted model has no {missing[0]} (an unexpected peft layout)")
    return plan


def merged(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling * B A, in fp32 (peft's delta of a Linear layer)."""
    return weight.float() + (b.float() @ a.float()) * scaling


# -- the adapter on disk ---------------------------------------------------------------------------
def save_adapter(folder: str | Path, peft_model, tensors: dict[str, torch.Tensor]) -> None:
    """peft's adapter folder: `adapter_config.json` and `adapter_model.safetensors` from `tensors`
    (the adapted model's full trainable tensors, by state-dict key)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(peft_model, state_dict=tensors, save_embedding_layers=False)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    peft_model.peft_config["default"].save_pretrained(folder)


def adapter_settings(config: dict) -> dict:
    """What must agree between a saved adapter and the run resuming it."""
    target = config.get("target_modules")
    return {"r": config.get("r"), "lora_alpha": config.get("lora_alpha"),
            "target_modules": sorted(target) if isinstance(target, (list, set, tuple)) else target,
            "modules_to_save": sorted(config.get("modules_to_save") or [])}


def check_adapter(folder: str | Path) -> dict:
    """The saved adapter's config, after checking both files (weights by their header)."""
    from safetensors import safe_open

    folder = Path(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: missing (the LoRA adapter of this checkpoint)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: not readable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: not a LoRA adapter config")
    try:
        with safe_open(folder / ADAPTER_WEIGHTS, "pt"):
            pass
    except Exception as e:
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: cannot be read, truncated or corrupt ({e})") from None
    return config


def load_adapter(folder: str | Path, peft_model) -> None:
    """The adapter saved by `save_adapter` into `peft_model` (before it is sharded); one that does not
    fit (other rank, alpha, targets, shapes) is a CheckpointError."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    saved = adapter_settings(check_adapter(folder))
    ours = adapter_settings(peft_model.peft_config["default"].to_dict())
    if saved != ours:
        diff = ", ".join(f"{k} {saved[k]!r} (this run: {ours[k]!r})" for k in saved if saved[k] != ours[k])
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: the adapter was trained with other LoRA settings: {diff}")
    state = load_file(folder / ADAPTER_WEIGHTS)
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: does not fit this model ({e})") from None
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if result.unexpected_keys or missing:
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: does not fit this model (unexpected "
                              f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]})")

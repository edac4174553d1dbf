"""Load a YAML pipeline file: OmegaConf for `${...}`, Hydra `defaults:` lists and `key.path=value`
overrides; ROLL's keys adopted (`roll_compat.py`, `no_effect.py`); pydantic for types."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from vroll.config.domains import domain_warnings, routing_notes
from vroll.config.errors import ConfigError, Issue
from vroll.config.no_effect import SECTIONS, record_no_effect
from vroll.config.numbers import range_warnings
from vroll.config.options import own_keys
from vroll.config.roll_compat import DIFFERENT, UNSUPPORTED, adopt_roll_keys
from vroll.config.rules import capped_response_warnings, check_config, shared_slot_warnings
from vroll.config.schema import (DataArgs, GeneratingArgs, ModelArgs, PipelineConfig, RewardConfig, RoleConfig,
                                 TrainingArgs, ValidationConfig)
from vroll.config.strategies import use_vroll_strategies
from vroll.config.suggest import closest

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A file as read: the typed config (None when even a partial parse fails), every problem, and what
    --use-vroll-strategies changed."""

    cfg: PipelineConfig | None
    issues: list[Issue]
    changes: list[str] = field(default_factory=list)


def load_config(path: str | Path, overrides: list[str] | None = None, platform: str | None = None,
                vroll_strategies: bool = False) -> PipelineConfig:
    """The typed, validated configuration; raises ConfigError listing every problem.

    `platform` ("cpu", "cuda") also checks the values that platform cannot run; `vroll_strategies` runs
    each role ROLL names a strategy for that vroll lacks on vroll's own (`strategies.use_vroll_strategies`).
    """
    loaded = read_config(path, overrides, platform, vroll_strategies)
    if loaded.issues:
        raise ConfigError(loaded.issues, str(path))
    return loaded.cfg


def read_config(path: str | Path, overrides: list[str] | None = None, platform: str | None = None,
                vroll_strategies: bool = False) -> Loaded:
    """Everything `load_config` checks, returned rather than raised (so callers can add their own checks)."""
    raw = resolve_yaml(path, overrides or [])
    changes = use_vroll_strategies(raw) if vroll_strategies else []
    notes, issues = adopt_roll_keys(raw)
    no_effect = record_no_effect(raw, TYPED)
    type_issues, cfg = typed_or_issues(raw)
    reported = {i.path for i in type_issues}
    issues = [i for i in issues if i.path not in reported] + type_issues
    if cfg is not None:  # rules still run on what parsed, so every problem is reported at once
        cfg._no_effect, cfg._differences = no_effect, {**notes, **routing_notes(cfg.rewards)}
        reported |= {i.path for i in issues}
        issues += [i for i in check_config(cfg, platform) if i.path not in reported]
    if cfg is not None and not issues:
        for warning in (range_warnings(cfg) + domain_warnings(cfg) + capped_response_warnings(cfg)
                        + shared_slot_warnings(cfg, platform)):
            log.warning("%s: %s", path, warning)
    return Loaded(cfg, issues, changes)


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


# section of no_effect.SECTIONS -> the keys vroll's schema types there (kept in the file, not removed)
TYPED = {"": _fields(PipelineConfig), "role": _fields(RoleConfig), "reward_role": _fields(RewardConfig),
         "reward": _fields(RewardConfig),
         "model_args": _fields(ModelArgs), "training_args": _fields(TrainingArgs),
         "generating_args": _fields(GeneratingArgs), "data_args": _fields(DataArgs),
         "validation": _fields(ValidationConfig), "strategy_config.fsdp2_train": set(own_keys("fsdp2_train"))}


def resolve_yaml(path: str | Path, overrides: list[str]) -> dict[str, Any]:
    """YAML + overrides with every interpolation resolved, as plain Python values."""
    source = str(path)
    if not Path(path).is_file():
        raise ConfigError([Issue("", f"config file not found: {source}")])
    conf = compose(Path(path), source)
    issues = [Issue("", f"override {o!r} is not of the form key.path=value") for o in overrides if "=" not in o]
    if issues:
        raise ConfigError(issues, source)
    try:
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError([Issue("", f"cannot apply overrides {overrides}: {e}")], source) from None
    except yaml.YAMLError as e:  # a value read as YAML: `key={content} ...` opens a mapping
        raise ConfigError([Issue("", f"an override's value is not valid YAML ({str(e).splitlines()[0]}): quote "
                                     "it, e.g. 'key=\"{content} ...\"'")], source) from None
    try:
        return OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException:
        raise ConfigError(interpolation_issues(conf), source) from None


def compose(path: Path, source: str, seen: tuple[Path, ...] = ()) -> DictConfig:
    """The file with its Hydra `defaults:` list composed in: entries `path[@_here_]` (relative to the
    file, `.yaml` implied) merged in order, the file itself last or where `_self_` stands. Anything
    else (config groups, other packages, `override`) is refused by name, never ignored."""
    try:
        conf = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends: report, do not crash
        raise ConfigError([Issue("", f"cannot parse YAML {path}: {e}")], source) from None
    if not isinstance(conf, DictConfig):
        raise ConfigError([Issue("", f"{path} must hold a mapping of keys at the top level")], source)
    if "defaults" not in conf:
        return conf
    entries = OmegaConf.to_container(conf.defaults) if isinstance(conf.defaults, ListConfig) else conf.defaults
    if not isinstance(entries, list):
        raise ConfigError([Issue("defaults", "must be a list (Hydra's defaults list)")], source)
    own = OmegaConf.masked_copy(conf, [k for k in conf if k != "defaults"])
    parts, issues = [], []
    for entry in list(entries) + ([] if "_self_" in entries else ["_self_"]):
        if entry == "_self_":
            parts.append(own)
            continue
        name, _, package = str(entry).partition("@")
        if not isinstance(entry, str) or package not in ("", "_here_", "_global_") or name.startswith("override"):
            issues.append(Issue("defaults", f"{entry!r}: vroll composes entries 'path' or 'path@_here_' (a file "
                                            "merged at the top level); config groups and other packages are not "
                                            "supported: merge that file into this one"))
            continue
        included = (path.parent / name).with_suffix(".yaml") if not name.endswith((".yaml", ".yml")) \
            else path.parent / name
        if not included.is_file() or included.resolve() in seen:
            issues.append(Issue("defaults", f"{entry!r}: " + ("includes itself" if included.is_file() else
                                                              f"{included} does not exist")))
            continue
        parts.append(compose(included, source, seen + (path.resolve(),)))
    if issues:
        raise ConfigError(issues, source)
    return OmegaConf.merge(*parts)


def interpolation_issues(conf: DictConfig | ListConfig, prefix: str = "") -> list[Issue]:
    """One issue per value whose `${...}` cannot be resolved."""
    issues = []
    keys = conf.keys() if isinstance(conf, DictConfig) else range(len(conf))
    for key in keys:
        path = f"{prefix}{key}" if isinstance(conf, DictConfig) else f"{prefix[:-1]}[{key}]"
        node = conf._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)):
            issues += interpolation_issues(node, path + ".")
            continue
        try:
            conf[key]
        except OmegaConfBaseException as e:
            expr = node._value()
            reason = str(e).splitlines()[0]
            issues.append(Issue(path, f"cannot resolve {expr!r}: {reason}"))
    return issues


def typed_or_issues(raw: dict[str, Any]) -> tuple[list[Issue], PipelineConfig | None]:
    """The typed config and the type problems. With problems, the config is the one parsed without
    the offending keys (so cross-field rules can still run), or None when even that fails."""
    issues: list[Issue] = []
    raw = copy.deepcopy(raw)
    for _ in range(3):
        try:
            cfg = PipelineConfig.model_validate(raw)
        except ValidationError as e:
            errors = e.errors()
            issues += [pydantic_issue(err) for err in errors]
            if not all(drop_key(raw, err["loc"]) for err in errors):
                return issues, None
            continue
        fill_defaults(cfg)
        return issues, cfg
    return issues, None


def drop_key(raw: dict, loc: tuple) -> bool:
    """Remove the value at `loc` (so its default applies); False when that is not possible."""
    keys = [k for k in loc if not str(k).startswith("function-")]
    node = raw
    for k in keys[:-1]:
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    if isinstance(node, dict) and keys and keys[-1] in node:
        del node[keys[-1]]
        return True
    return False


def fill_defaults(cfg: PipelineConfig) -> None:
    """Role names, and model paths that default to the top-level `pretrain` / `reward_pretrain` (the
    critic's: `reward_pretrain` as in ROLL, else `pretrain`)."""
    for path, role in cfg.roles().items():
        role.name = path
        role.seed = cfg.seed
        if role.model_args.model_name_or_path is None:
            model_reward = isinstance(role, RewardConfig) and role.reward_type == "model"
            model_reward = model_reward or (path == "critic" and cfg.reward_pretrain is not None)
            role.model_args.model_name_or_path = cfg.reward_pretrain if model_reward else cfg.pretrain


def pydantic_issue(err: dict) -> Issue:
    loc = [str(x) for x in err["loc"] if not str(x).startswith("function-")]
    path = ".".join(loc)
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = allowed_keys(PipelineConfig, loc[:-1])
        near = closest(loc[-1], allowed + roll_keys_at(loc[:-1]))
        return Issue(path, f"unknown key{near}; allowed here: {', '.join(allowed)}")
    if kind == "missing":
        return Issue(path, "is required")
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "finite_number":
        return Issue(path, f"{value!r} is not a finite number: give a finite value")
    if kind == "value_error":
        return Issue(path, msg)
    return Issue(path, f"{value!r} is not allowed: {msg[0].lower()}{msg[1:]}")


def roll_keys_at(loc: list[str]) -> list[str]:
    """ROLL's keys that vroll reads or accepts at `loc` beyond the schema's fields (for suggestions)."""
    if loc[:1] == ["rewards"]:
        sections = ("reward_role", "reward") if len(loc) == 2 else tuple(loc[2:3])
    elif loc[:1] == ["validation"]:
        sections = ("validation",) if len(loc) == 1 else tuple(loc[1:2])
    else:
        sections = ("",) if not loc else ("role",) if len(loc) == 1 else tuple(loc[1:2])
    tables = [SECTIONS, DIFFERENT, UNSUPPORTED]
    return [k for s in sections for table in tables for k in table.get("role" if s == "reward_role" else s, {})]


def allowed_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the section at `loc` (following nested models and mappings of models)."""
    import typing

    for key in loc:
        field = model.model_fields.get(key)
        if field is None:  # a key of a mapping (e.g. a reward worker's name)
            continue
        candidates = [field.annotation]
        while candidates:
            tp = candidates.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                model = tp
                break
            candidates += list(typing.get_args(tp))
    return [n for n, f in model.model_fields.items() if not f.exclude]

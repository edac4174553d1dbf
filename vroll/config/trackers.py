"""ROLL's `track_with` / `tracker_kwargs`: where a run's metrics go besides output_dir/metrics.jsonl
(always written). The trackers vroll has, the `tracker_kwargs` each takes, and the checks made before
anything starts live here; `pipeline/tracking.py` opens them.

- `tensorboard` (ROLL's default): events in output_dir/tensorboard, or, with `log_dir`, in
  log_dir/exp_name/<start time> as ROLL writes them; the other kwargs go to torch's SummaryWriter.
- `wandb`: offline only (WANDB_MODE=offline; `wandb sync` uploads later if wanted): `project`, `name`,
  `tags`, `notes`, `group`, `log_dir` (wandb's `dir`, default output_dir). `api_key` is accepted and
  never used (an offline run needs none).
- `stdout`: one line per step on standard output, ROLL's `metrics_tag: {"step": ..., "metrics": ...}`.
- null or "": no tracker (metrics.jsonl only), as ROLL's empty name.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vroll.config.errors import Issue
from vroll.config.suggest import closest

# tracker -> the tracker_kwargs it takes
TRACKER_KWARGS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("log_dir", "comment", "purge_step", "max_queue", "flush_secs", "filename_suffix"),
    "wandb": ("project", "name", "tags", "notes", "group", "log_dir", "mode", "api_key"),
    "stdout": (),
}
# tracker -> (the module it needs, how to install it)
PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"), "wandb": ("wandb", "pip install wandb")}
ROLL_ONLY = ("swanlab", "trackio")  # ROLL's other trackers, which go online
WANDB_MODES = ("offline", "disabled")


def tracker_name(cfg) -> str | None:
    """The tracker the run opens (None: metrics.jsonl only)."""
    return cfg.track_with or None


def check_tracking(cfg) -> list[Issue]:
    """The tracker's name and its tracker_kwargs."""
    name = tracker_name(cfg)
    if name is None:
        return []
    allowed = ", ".join(TRACKER_KWARGS)
    if name not in TRACKER_KWARGS:
        why = "ROLL's tracker is not in vroll (it logs online)" if name in ROLL_ONLY else "not a tracker"
        return [Issue("track_with", f"{name!r}: {why}{closest(name, TRACKER_KWARGS)}; allowed: {allowed}, or null "
                                    "for metrics.jsonl only")]
    issues = []
    for key, value in cfg.tracker_kwargs.items():
        if key not in TRACKER_KWARGS[name]:
            takes = ", ".join(TRACKER_KWARGS[name]) or "none"
            issues.append(Issue(f"tracker_kwargs.{key}", f"{value!r}: not an option of track_with {name!r} "
                                                         f"(it takes: {takes})"))
    mode = cfg.tracker_kwargs.get("mode") if name == "wandb" else None
    if mode is not None and mode not in WANDB_MODES:
        issues.append(Issue("tracker_kwargs.mode", f"{mode!r}: vroll runs wandb offline only (never online); "
                                                   f"allowed: {', '.join(WANDB_MODES)}; upload later with "
                                                   "`wandb sync`"))
    log_dir = cfg.tracker_kwargs.get("log_dir")
    if log_dir is not None and not isinstance(log_dir, str):
        issues.append(Issue("tracker_kwargs.log_dir", f"{log_dir!r}: a folder path"))
    return issues


def installed(name: str) -> bool:
    """Whether the tracker's package can be imported (found without importing it)."""
    return name not in PACKAGES or importlib.util.find_spec(PACKAGES[name][0]) is not None


def tracker_package_issues(cfg) -> list[Issue]:
    """The tracker's package, before a run starts: a tracker the file names must be installed (the
    default tensorboard, left unset, is skipped with a log line when it is not)."""
    name = tracker_name(cfg)
    if name not in PACKAGES or installed(name):
        return []
    if name == "tensorboard" and "track_with" not in cfg.model_fields_set:
        return []
    return [Issue("track_with", f"{name!r} needs the {PACKAGES[name][0]} package, which is not installed: "
                                f"{PACKAGES[name][1]} (into vroll's environment), or set track_with: null for "
                                "metrics.jsonl only")]


def wandb_init_args(kwargs: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """wandb.init's arguments: ROLL's names (log_dir is wandb's dir), always offline unless disabled."""
    args = {k: kwargs[k] for k in ("project", "name", "tags", "notes", "group") if kwargs.get(k) is not None}
    args["dir"] = kwargs.get("log_dir") or output_dir
    args["mode"] = kwargs.get("mode") or "offline"
    return args

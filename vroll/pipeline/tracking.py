"""What a run leaves for its user: metrics.jsonl (one line per step), the same to the file's tracker
(`track_with`: TensorBoard, wandb offline, or standard output; config/trackers.py), and a PNG of the
reward and validation curves at the end."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from vroll.config import trackers

log = logging.getLogger(__name__)


class PhaseTimer:
    """Seconds spent in each phase of a step, as `time/<phase>` metrics."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        out["time/step"] = sum(self.seconds.values())
        return out


def process_rss_bytes() -> int:
    """Resident memory of this process (Linux), for the per-step memory metric."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MetricsLog:
    """Appends one JSON line per record; on resume keeps only the lines up to the resumed step. Each
    record also goes to the file's tracker (`track_with`), when there is one."""

    def __init__(self, output_dir: Path, resume_step: int | None = None, tracker=None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self.tracker = tracker

    def _truncate_after(self, step: int) -> None:
        kept = [line for line in self.read() if line.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in record.items() if k != "step" and _number(v)}, record.get("step", 0))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class TensorBoardTracker:
    """TensorBoard events (torch's SummaryWriter); a resumed run purges the events after its step."""

    def __init__(self, log_dir: Path, resume_step: int | None, **kwargs):
        from torch.utils.tensorboard import SummaryWriter

        if resume_step is not None:
            kwargs.setdefault("purge_step", resume_step + 1)
        self.log_dir = log_dir
        self.writer = SummaryWriter(str(log_dir), **kwargs)

    def log(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A wandb run, offline (WANDB_MODE=offline is set first, so nothing goes online)."""

    def __init__(self, init_args: dict, config: dict):
        os.environ["WANDB_MODE"] = init_args["mode"]
        import wandb

        self.run = wandb.init(config=config, **init_args)

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class StdoutTracker:
    """One line per step on standard output, ROLL's `metrics_tag: {"step": ..., "metrics": {...}}`."""

    def log(self, values: dict, step: int) -> None:
        print("metrics_tag: " + json.dumps({"step": step, "metrics": values}), flush=True)

    def close(self) -> None:
        pass


def open_tracker(cfg, output_dir: Path, resume_step: int | None = None, started: str | None = None):
    """The file's tracker (config/trackers.py), or None (metrics.jsonl only). The default tensorboard is
    skipped with a log line when not installed; a named one was checked before start."""
    name, kwargs = trackers.tracker_name(cfg), dict(cfg.tracker_kwargs)
    if name == "stdout":
        return StdoutTracker()
    if name == "wandb":
        config = cfg.model_dump(mode="json")
        config["tracker_kwargs"].pop("api_key", None)  # unused offline; not copied into the run's files
        return WandbTracker(trackers.wandb_init_args(kwargs, str(output_dir)), config)
    if name == "tensorboard":
        if not trackers.installed(name):
            log.info("tensorboard is not installed: metrics go to metrics.jsonl only (%s)", trackers.PACKAGES[name][1])
            return None
        log_dir = kwargs.pop("log_dir", None)
        folder = Path(output_dir) / "tensorboard" if log_dir is None else \
            Path(log_dir).expanduser() / cfg.exp_name / (started or time.strftime("%Y%m%d-%H%M%S"))
        return TensorBoardTracker(folder, resume_step, **kwargs)
    return None


def plot_curves(records: list[dict], out_png: Path) -> Path | None:
    """Training reward and validation accuracy per step, in one PNG (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written")
        return None
    train = [r for r in records if "reward/mean" in r]
    val = [r for r in records if "val/accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps, rewards = [r["step"] for r in train], [r["reward/mean"] for r in train]
        ax.plot(steps, rewards, alpha=0.35, label="train reward (mean per step)")
        window = max(1, min(10, len(rewards) // 5))
        smooth = [sum(rewards[max(0, i - window + 1):i + 1]) / len(rewards[max(0, i - window + 1):i + 1])
                  for i in range(len(rewards))]
        ax.plot(steps, smooth, color="C0", label=f"train reward ({window}-step average)")
    if val:
        ax.plot([r["step"] for r in val], [r["val/accuracy"] for r in val], "o-", color="C1",
                label="validation accuracy")
    ax.set_xlabel("step")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png

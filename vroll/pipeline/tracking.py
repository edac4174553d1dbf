"""What a run leaves for its user: metrics.jsonl (one line per step), TensorBoard events when
tensorboard is installed, and a PNG of the reward and validation curves at the end."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

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
    """Appends one JSON line per record; on resume keeps only the lines up to the resumed step."""

    def __init__(self, output_dir: Path, resume_step: int | None = None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self._tb = self._tensorboard(Path(output_dir) / "tensorboard")

    def _truncate_after(self, step: int) -> None:
        kept = [line for line in self.read() if line.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    @staticmethod
    def _tensorboard(folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(folder))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record.get("step", 0))
            self._tb.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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

"""Checkpoints: `output_dir/checkpoints/step_N/` is a standard Hugging Face model folder (loadable by
`from_pretrained` and by vLLM) plus `trainer_state.pt` (optimiser, scheduler, RNG) and
`vroll_state.json` (step, data order, weight version); a critic (gae) is a folder of the same kind
inside it, `critic/`. Written aside and renamed into place, so an
interrupted save never leaves a half-written checkpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from vroll.config.errors import ConfigError, Issue

STATE_JSON = "vroll_state.json"
CRITIC_DIR = "critic"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step}"


def save_checkpoint(output_dir: str | Path, step: int, trainer, state: dict, others: dict | None = None) -> Path:
    """The trainer's folder, with `others` (subfolder name -> another training role) inside it."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save(tmp)
    for name, role in (others or {}).items():
        role.save(tmp / name)
    (tmp / STATE_JSON).write_text(json.dumps({"step": step, **state}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step_*")
             if (m := re.fullmatch(r"step_(\d+)", p.name)) and (p / STATE_JSON).is_file()]
    return max(found)[1] if found else None


def find_checkpoint(resume: str | bool, output_dir: str | Path) -> Path | None:
    """`resume_from_checkpoint`: false (start fresh), true (the latest in output_dir, if any) or a
    checkpoint folder."""
    if resume is False or resume in ("", None):
        return None
    if resume is True:
        return latest_checkpoint(output_dir)
    path = Path(str(resume)).expanduser()
    if not (path / STATE_JSON).is_file():
        raise ConfigError([Issue("resume_from_checkpoint", f"{str(resume)!r} is not a vroll checkpoint folder "
                                                           f"(no {STATE_JSON}); use true for the latest in output_dir")])
    return path


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE_JSON).read_text())

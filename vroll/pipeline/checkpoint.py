"""Checkpoints: `output_dir/checkpoints/step_N/` is a standard Hugging Face model folder (loadable by
`from_pretrained` and by vLLM) plus the trainer's state (optimiser, scheduler, RNG as safetensors +
JSON: `strategy/train_state.py`) and `vroll_state.json` (step, data order, weight version); a critic
(gae) is a folder of the same kind inside it, `critic/`. Nothing in a checkpoint is unpickled. A save
is written aside and renamed into place, and an interrupted save leaves nothing behind; a resume
checks the checkpoint before anything starts (its files, and that its tensors fit the configured
models) and falls back to the newest one that loads. Under LoRA the trainer's folder holds the merged
model and, in `adapter/`, the adapter in peft's format (`models/lora.py`); a LoRA run resumes only
from such a checkpoint, and a full fine-tune only from one without."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from vroll.config.errors import CheckpointError, ConfigError, Issue
from vroll.config.lora import lora_on
from vroll.config.passes import critic_enabled
from vroll.config.schema import PipelineConfig
from vroll.models.lora import ADAPTER_DIR, check_adapter
from vroll.models.paths import resolve_model_path
from vroll.models.shapes import ModelTensors, file_tensors, model_tensors
from vroll.strategy.train_state import (EARLIER_TENSORS, LEGACY, TENSORS, check_train_state, optimizer_shapes,
                                       tensors_file)

log = logging.getLogger(__name__)

STATE_JSON = "vroll_state.json"
CRITIC_DIR = "critic"
PICKLED = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step}"


@contextmanager
def written_aside(final: Path):
    """A sibling folder to write `final` into: renamed into place when the block ends, removed when it
    fails or is interrupted (Ctrl-C), so no half-written folder ever stands at `final`."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(output_dir: str | Path, step: int, trainer, state: dict, others: dict | None = None) -> Path:
    """The trainer's folder, with `others` (subfolder name -> another training role) inside it."""
    final = checkpoint_dir(output_dir, step)
    with written_aside(final) as tmp:
        trainer.save(tmp)
        for name, role in (others or {}).items():
            role.save(tmp / name)
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, **state}, indent=1))
    return final


def discard_partial_saves(output_dir: str | Path) -> None:
    """Remove the folders of saves that never finished (`.step_N.tmp`, `.model.tmp`), e.g. a killed run's."""
    root = Path(output_dir)
    for tmp in [*root.glob("checkpoints/.*.tmp"), *root.glob(".*.tmp")]:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def partial_saves_discarded(output_dir: str | Path):
    """Around a run: no partial save of an earlier run before it, none of its own after it, however it
    ends (a save a trainer rank was still writing when the run was interrupted included)."""
    discard_partial_saves(output_dir)
    try:
        yield
    finally:
        discard_partial_saves(output_dir)


def newest_first(output_dir: str | Path) -> list[Path]:
    """The checkpoint folders in output_dir, the highest step first."""
    root = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """ROLL's `max_ckpt_to_keep`: remove all but the newest `keep` checkpoints (0 keeps all); the removed."""
    if keep <= 0:
        return []
    old = newest_first(output_dir)[keep:]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def find_checkpoint(resume: str | bool, output_dir: str | Path, inner: tuple[str, ...] = (),
                    models: dict[str, ModelTensors] | None = None, *, lora: bool | None = None
                    ) -> tuple[Path | None, dict]:
    """`resume_from_checkpoint`: false (start fresh), true (the newest checkpoint in output_dir that
    loads, if any) or a checkpoint folder; with its checked `vroll_state.json` ({"step": 0} when none).
    `inner`: the folders of other training roles the run needs in it (the critic's). `models`: the
    tensors each folder's weights must fit ("" the trainer's folder, then `inner` names), when known
    (`models_to_fit`). `lora`: whether the run trains LoRA adapters (the trainer's folder must then
    hold one, else must not)."""
    if resume is False or resume in ("", None):
        return None, {"step": 0}
    if resume is True:
        return newest_loadable(output_dir, inner, models, lora=lora)
    path = Path(str(resume)).expanduser()
    if not (path / STATE_JSON).is_file():
        raise ConfigError([Issue("resume_from_checkpoint", f"{str(resume)!r} is not a vroll checkpoint folder "
                                                           f"(no {STATE_JSON}); use true for the latest in output_dir")])
    return path, check_checkpoint(path, inner, models, lora=lora)


def models_to_fit(cfg: PipelineConfig) -> dict[str, ModelTensors]:
    """The tensors a resumed checkpoint must fit (`find_checkpoint`'s `models`): actor_train's model
    and, with a critic, its value model, each built from its config.json on the meta device. A model
    whose tensors cannot be told that way is left out with a warning (its load checks it then)."""
    roles = {"": ("actor_train", cfg.actor_train, False)}
    if critic_enabled(cfg):
        roles[CRITIC_DIR] = ("critic", cfg.critic, True)
    models = {}
    for folder, (key, role, value_model) in roles.items():
        path = resolve_model_path(role.model_args.model_name_or_path, f"{key}.model_args.model_name_or_path")
        try:
            # under LoRA (actor_train only; the trainer adapts no value model) the optimiser holds the
            # adapters' parameters: model_tensors derives them from the meta model wrapped as the trainer wraps it
            lora_args = role.model_args if lora_on(role) and not value_model else None
            models[folder] = model_tensors(path, value_model, role.model_args.trust_remote_code, lora_args)
        except Exception as e:  # transformers' own errors; the trainer would meet them when it starts
            log.warning("resume: cannot tell the tensors of %s's model %s from its config (%s: %s); the checkpoint's "
                        "fit is checked only when it loads", key, path, type(e).__name__, e)
    return models


def newest_loadable(output_dir: str | Path, inner: tuple[str, ...] = (),
                    models: dict[str, ModelTensors] | None = None, *, lora: bool | None = None
                    ) -> tuple[Path | None, dict]:
    """The newest checkpoint that passes `check_checkpoint`; each newer one is skipped with a warning."""
    root = Path(output_dir) / "checkpoints"
    found = newest_first(output_dir)
    reasons = []
    for path in found:
        try:
            return path, check_checkpoint(path, inner, models, lora=lora)
        except CheckpointError as e:
            log.warning("resume: skipping checkpoint %s: %s", path.name, e)
            reasons.append(f"{path.name}: {e}")
    if found:
        raise CheckpointError(f"resume_from_checkpoint: no checkpoint in {root} loads and fits this run's models ({'; '.join(reasons)}); move "
                              "them away, or set resume_from_checkpoint: false to start over")
    return None, {"step": 0}


def check_checkpoint(path: Path, inner: tuple[str, ...] = (), models: dict[str, ModelTensors] | None = None,
                     *, lora: bool | None = None) -> dict:
    """Its `vroll_state.json`, after checking every file a resume reads (weights by their headers), in
    it and in its `inner` folders; raises CheckpointError naming a file that is missing, truncated,
    malformed or unsafe, whose tensors do not fit `models`, or a trainer folder with (`lora` False) or
    without (`lora` True) an adapter (see `find_checkpoint`)."""
    path = Path(path)
    models = models or {}
    state = read_state(path)
    # LoRA or not first: a checkpoint of the other kind would otherwise be named by the fit check
    # (its optimiser state holds other parameters), which says less
    has_adapter = (path / ADAPTER_DIR).is_dir()
    if lora is not None and lora != has_adapter:
        raise CheckpointError(f"{path}: saved by a run {'without' if lora else 'with'} LoRA (it has "
                              f"{'no ' if lora else ''}{ADAPTER_DIR}/ folder), and this run "
                              f"{'trains LoRA adapters' if lora else 'trains every weight'}: resume it with the "
                              "lora_target it was saved with, or start afresh")
    check_trainer_folder(path, models.get(""))
    for name in inner:
        if not (path / name).is_dir():
            raise CheckpointError(f"{path / name}: missing (this run needs the {name}'s checkpoint, and this one was "
                                  f"saved without it)")
        check_trainer_folder(path / name, models.get(name))
    return state


def check_trainer_folder(path: Path, model: ModelTensors | None = None) -> None:
    """A training role's saved folder: no pickled files, its config, weights and trainer state; and,
    given the `model` it must fit, its weights' names, shapes and dtypes and its optimiser state's
    shapes (headers only)."""
    pickled = sorted(p for p in path.iterdir() if p.suffix in PICKLED and p.name != LEGACY)
    if pickled:  # transformers or vLLM might load them; vroll writes none
        raise CheckpointError(f"{pickled[0]}: refused: a vroll checkpoint holds no pickled files (loading one could "
                              "run code); delete it if you trust the rest of the folder")
    read_json(path / "config.json")
    weights = [w for w in sorted(path.glob("*.safetensors")) if w.name != EARLIER_TENSORS]
    if not weights:
        raise CheckpointError(f"{path}: no model weights (*.safetensors)")
    for w in weights:
        check_safetensors(w)
    check_train_state(path)
    if (path / ADAPTER_DIR).is_dir():
        check_adapter(path / ADAPTER_DIR)
    if model is not None:
        check_fit(path, weights, model)


def check_fit(path: Path, weights: list[Path], model: ModelTensors) -> None:
    """Raise CheckpointError naming the file and the first tensor that does not fit `model`."""
    wrong = model.weights_mismatch(file_tensors(weights))
    if wrong is not None:
        file, why = wrong
        raise CheckpointError(f"{file or path}: does not fit the model ({model.source}): {why}; it is another "
                              "model's checkpoint, or the model in the file changed since it was saved")
    why = model.optimizer_mismatch(optimizer_shapes(path))
    if why is not None:
        raise CheckpointError(f"{tensors_file(path)}: the optimiser state does not fit the model ({model.source}): "
                              f"{why}")


def read_state(path: Path) -> dict:
    file = Path(path) / STATE_JSON
    state = read_json(file)
    data = state.get("data") if isinstance(state, dict) else None
    ints = (state.get("step"), state.get("weight_version"), *sampler_ints(data)) if isinstance(data, dict) else (None,)
    if not all(isinstance(v, int) for v in ints) or not isinstance(state.get("algorithm", {}), dict):
        raise CheckpointError(f"{file}: not a vroll checkpoint state (expected integers step, weight_version, "
                              "data.epoch and data.position, or with domain_interleave_probs data.extra and each "
                              "domain's epoch and position in data.domains)")
    return state


def sampler_ints(data: dict) -> tuple:
    """The integers of the prompt sampler's state: one order's (epoch, position), or each domain's and
    the extra draws' count (pipeline/dataset.DomainSampler)."""
    if "domains" not in data:
        return data.get("epoch"), data.get("position")
    domains = data["domains"]
    if not isinstance(domains, dict) or not domains:
        return (None,)
    return (data.get("extra"), *[v for d in domains.values()
                                 for v in ((d.get("epoch"), d.get("position")) if isinstance(d, dict) else (None,))])


def read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not readable JSON ({e})") from None


def check_safetensors(file: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(file, "pt"):
            pass
    except Exception as e:  # safetensors checks the header covers the whole file: truncation shows here
        raise CheckpointError(f"{file}: cannot be read, truncated or corrupt ({e})") from None

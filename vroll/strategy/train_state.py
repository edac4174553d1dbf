"""The trainer's state on disk in formats that cannot run code: every tensor in `trainer_state.tensors`
(safetensors' format, under a name that model loaders taking every `*.safetensors` of a folder, such
as vLLM's, do not mistake for weights), everything else (nesting, numbers, strings) in
`trainer_state.json`, which names each tensor by its key. Earlier vroll checkpoints keep loading:
`trainer_state.safetensors` (the same format), and `trainer_state.pt` read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain data."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from vroll.config.errors import CheckpointError

TENSORS, SKELETON, LEGACY = "trainer_state.tensors", "trainer_state.json", "trainer_state.pt"
EARLIER_TENSORS = "trainer_state.safetensors"  # vroll before the rename: vLLM loaded it as weights
FORMAT = "vroll-trainer-state/1"
REQUIRED = ("optimizer", "scheduler", "torch_rng")


def save_train_state(folder: str | Path, state: dict) -> None:
    """Write `state` (nested dicts, lists, tuples, tensors and JSON scalars) as the two files."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = {"format": FORMAT, "state": _encode(state, "", tensors)}
    save_file(tensors, Path(folder) / TENSORS, metadata={"format": FORMAT})
    (Path(folder) / SKELETON).write_text(json.dumps(skeleton))


def load_train_state(folder: str | Path) -> dict:
    """The state `save_train_state` wrote (or an earlier vroll's `trainer_state.pt`), checked."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / SKELETON).exists() and (folder / LEGACY).exists():
        return _checked(_load_legacy(folder / LEGACY), folder / LEGACY)
    skeleton = _read_skeleton(folder)
    try:
        tensors = load_file(tensors_file(folder))
    except Exception as e:  # safetensors' own errors name no file
        raise CheckpointError(f"{tensors_file(folder)}: cannot be read ({e})") from None
    return _checked(_decode(skeleton["state"], tensors, tensors_file(folder)), folder / SKELETON)


def tensors_file(folder: Path) -> Path:
    """The state's tensors: `trainer_state.tensors`, or an earlier vroll's `trainer_state.safetensors`."""
    earlier = folder / EARLIER_TENSORS
    return earlier if not (folder / TENSORS).exists() and earlier.exists() else folder / TENSORS


def check_train_state(folder: str | Path) -> None:
    """Raise CheckpointError naming the file when the state is missing, truncated or malformed; reads
    headers only (an earlier vroll's file is parsed with its tensors memory-mapped)."""
    from safetensors import safe_open

    folder = Path(folder)
    if not (folder / SKELETON).exists() and (folder / LEGACY).exists():
        _checked(_load_legacy(folder / LEGACY, mmap=True), folder / LEGACY)
        return
    skeleton = _read_skeleton(folder)
    try:
        with safe_open(tensors_file(folder), "pt") as f:
            keys = set(f.keys())
    except Exception as e:
        raise CheckpointError(f"{tensors_file(folder)}: cannot be read ({e})") from None
    _checked(_decode(skeleton["state"], {k: k for k in keys}, tensors_file(folder)), folder / SKELETON)


def optimizer_shapes(folder: str | Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """The optimiser state's tensors by parameter name and slot (`exp_avg`, ...): their shapes, from
    the tensors file's header; {} for an earlier vroll's `trainer_state.pt` (not read for this)."""
    from safetensors import safe_open

    folder = Path(folder)
    if not (folder / SKELETON).exists():
        return {}
    found: dict[str, dict[str, tuple[int, ...]]] = {}
    with safe_open(tensors_file(folder), "pt") as f:
        for key in f.keys():  # `_encode`'s keys: /optimizer/state/<parameter>/<slot>
            parts = key.split("/")
            if len(parts) == 5 and parts[1:3] == ["optimizer", "state"]:
                found.setdefault(parts[3], {})[parts[4]] = tuple(f.get_slice(key).get_shape())
    return found


def _read_skeleton(folder: Path) -> dict:
    path = folder / SKELETON
    if not path.exists():
        raise CheckpointError(f"{folder}: no trainer state ({SKELETON} and {TENSORS}, or {LEGACY})")
    try:
        skeleton = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(skeleton, dict) or skeleton.get("format") != FORMAT or "state" not in skeleton:
        raise CheckpointError(f"{path}: not a vroll trainer state (expected format {FORMAT!r})")
    return skeleton


def _load_legacy(path: Path, mmap: bool = False) -> dict:
    try:
        return torch.load(path, weights_only=True, mmap=mmap, map_location="cpu")
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "unsupported" in line.lower()), "")
        raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors and plain data"
                              f"{f' ({why})' if why else ''}, and loading those could run code. A checkpoint "
                              "written by vroll holds none: this file was altered or comes from elsewhere") from None
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read, truncated or not a torch file "
                              f"({str(e).splitlines()[0]})") from None


def _checked(state, path: Path) -> dict:
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a vroll trainer state (missing {', '.join(missing)})")
    return state


def _encode(obj, key: str, tensors: dict):
    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise TypeError(f"trainer state: two tensors at {key}")
        tensors[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) and not k.startswith("__") for k in obj):
            raise TypeError(f"trainer state at {key or '/'}: keys must be strings not starting with '__'")
        return {k: _encode(v, f"{key}/{k}", tensors) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"trainer state at {key or '/'}: cannot store a {type(obj).__name__}")


def _decode(obj, tensors: dict, path: Path):
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise CheckpointError(f"{path}: has no tensor {obj['__tensor__']!r} (the file is incomplete or from "
                                  "another checkpoint)")
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, path) for v in obj["__tuple__"])
    return {k: _decode(v, tensors, path) for k, v in obj.items()}

"""A GGUF file turned into a Hugging Face folder once, cached under vroll's cache directory
(`VROLL_CACHE_DIR`, default ~/.cache/vroll) in `gguf/<name>-<key>`; every role then loads that folder.

transformers reads GGUF (de-quantizing every tensor) with the optional `gguf` package, but refuses to
save a model loaded that way; so a plain model is built from the file's config, the de-quantized
weights are loaded into it, and that model (fp32 safetensors) and the tokenizer are saved."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

from vroll.config.engine_args import cache_dir
from vroll.config.errors import UserError

log = logging.getLogger(__name__)

SOURCE_FILE = "vroll_gguf_source.json"  # written last: a folder without it is not a finished conversion
INSTALL_HINT = "pip install --no-deps gguf  (--no-deps keeps numpy as vLLM needs it)"


class GgufError(UserError, ValueError):
    """A GGUF file that cannot be converted; names the file and what is missing."""


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(".gguf")


def gguf_missing() -> str | None:
    """What the conversion lacks among the optional packages, or None."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"converting a GGUF file needs the optional package(s) {', '.join(missing)}: " + (
        INSTALL_HINT if missing == ["gguf"] else f"pip install --no-deps {' '.join(missing)}")


KEYS_FILE = "gguf-content-keys.json"  # in vroll's cache, beside gguf/: each file's content key, by path, size, mtime


def converted_folder(gguf_path: str | Path) -> Path:
    """Where the file's conversion lives in the cache: keyed by its content, so a changed file is
    converted again and the same file elsewhere or installed anew (a fresh virtual environment, as a
    clean CI checkout makes) finds the conversion already made."""
    path = Path(gguf_path).expanduser().resolve()
    return cache_dir() / "gguf" / f"{path.stem}-{content_key(path)}"


def content_key(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256, hashed once per path, size and mtime (remembered
    in the cache's KEYS_FILE: a 4 GB file takes seconds to hash)."""
    stat = path.stat()
    seen = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"
    keys_file = cache_dir() / KEYS_FILE
    try:
        keys = json.loads(keys_file.read_text())
    except (OSError, ValueError):
        keys = {}
    if not isinstance(keys, dict):
        keys = {}
    if isinstance(keys.get(seen), str):
        return keys[seen]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    keys = {k: v for k, v in keys.items() if Path(k.split("\0")[0]).is_file()}  # files gone are forgotten
    keys[seen] = digest.hexdigest()[:12]
    try:
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        partial = keys_file.with_name(f".{KEYS_FILE}.{os.getpid()}")
        partial.write_text(json.dumps(keys, indent=0) + "\n")
        partial.replace(keys_file)
    except OSError:  # a read-only cache: the key is hashed again next time
        pass
    return keys[seen]


def is_converted(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def gguf_folder(gguf_path: str | Path, key: str = "model") -> Path:
    """The Hugging Face folder of a GGUF file: the cached conversion, made now when absent."""
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise GgufError(f"{key}: {str(gguf_path)!r} was read as a GGUF file (it ends in .gguf), and there is no "
                        "such file")
    folder = converted_folder(path)
    if is_converted(folder):
        log.info("%s: %s is converted already: using %s", key, path, folder)
        return folder
    return convert_gguf(path, folder, key)


def convert_gguf(gguf_path: str | Path, out: str | Path, key: str = "model") -> Path:
    """Convert the file into `out` (a Hugging Face folder: config, fp32 safetensors, tokenizer),
    logging each phase; written beside `out` and renamed into place, so `out` is whole or absent."""
    path, out = Path(gguf_path).expanduser().resolve(), Path(out).expanduser()
    if not path.is_file():
        raise GgufError(f"{key}: {str(gguf_path)!r}: no such GGUF file")
    if (missing := gguf_missing()):
        raise GgufError(f"{key}: {str(gguf_path)!r} is a GGUF file; {missing}")
    if out.exists() and not is_converted(out):
        if any(out.iterdir()):
            raise GgufError(f"{key}: {out} exists and is not a conversion vroll made: choose an empty or new folder")
        out.rmdir()
    log.info("%s: converting %s (%.0f MB) into a Hugging Face folder at %s", key, path, path.stat().st_size / 1e6, out)
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_folder(path, staging, key)
        (staging / SOURCE_FILE).write_text(json.dumps({"gguf": str(path), "size": path.stat().st_size,
                                                       "mtime_ns": path.stat().st_mtime_ns}) + "\n")
        if out.exists():  # another process finished the same conversion first
            shutil.rmtree(staging)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%s: converted in %.1f s: %s (every role loads this folder)", key, time.perf_counter() - started, out)
    return out


def _write_folder(path: Path, folder: Path, key: str) -> None:
    """De-quantize with transformers' GGUF reader, rebuild a plain model, save it and the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where, name = str(path.parent), path.name
    try:
        log.info("%s: reading the tokenizer and config", key)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        config = AutoConfig.from_pretrained(where, gguf_file=name)
        log.info("%s: reading and de-quantizing the weights", key)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise GgufError(f"{key}: transformers cannot read {path} as a GGUF model: {e}") from None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    result = plain.load_state_dict(state, strict=False)
    missing = [n for n in result.missing_keys if not _tied(plain, n)]
    if missing or result.unexpected_keys:
        raise GgufError(f"{key}: {path}: the de-quantized weights do not fit the model its config describes "
                        f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")
    log.info("%s: saving %.0f M parameters (fp32 safetensors) and the tokenizer", key,
             sum(p.numel() for p in plain.parameters()) / 1e6)
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if getattr(loaded, "generation_config", None) is not None:
        loaded.generation_config.save_pretrained(folder)


def _tied(model, name: str) -> bool:
    """A weight tied to another (a tied lm_head): loaded with the one it shares."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return name in tied

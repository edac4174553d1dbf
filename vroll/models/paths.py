"""Where a role's model lives, in one of three forms: a local Hugging Face folder, a model id already in
the local Hugging Face cache (vroll never downloads), or a `.gguf` file, converted once into a cached
folder (`models/gguf.py`)."""

from __future__ import annotations

from pathlib import Path

from vroll.config.errors import Issue, UserError
from vroll.models.gguf import gguf_folder, is_gguf


class ModelNotFound(UserError, FileNotFoundError):
    pass


def resolve_model_path(name: str, key: str) -> str:
    """The folder to load (a cached id resolves to its snapshot folder, a GGUF file to its converted
    folder); vroll never downloads. `key` names the setting in errors."""
    if is_gguf(name):
        return str(gguf_folder(name, key))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    cached = cached_snapshot(name)
    if cached is not None:
        return cached
    raise ModelNotFound(f"{key}: {name!r} is not a model vroll can load; as " + "; as ".join(why_not(name))
                        + ". For a model to try, build the offline tiny one: `vroll tiny-model --out models/tiny`")


def cached_snapshot(name: str) -> str | None:
    """The local folder of a Hugging Face id whose config.json is in the cache, or None (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def why_not(name: str) -> list[str]:
    """What each of the three forms lacks, for the error."""
    path = Path(name).expanduser()
    folder = (f"a local folder: {path} is a file, not a folder" if path.exists() else
              f"a local folder: no such folder {path}")
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        HF_HUB_CACHE = "the Hugging Face cache"
    hub = (f"a Hugging Face id: not in the local cache ({HF_HUB_CACHE}); vroll never downloads: fetch it first "
           f"(`hf download {name}`)")
    gguf = "a GGUF file: the name does not end in .gguf"
    return [folder, hub, gguf]


def use_model_folders(cfg, roles: list[str] | None = None) -> list[Issue]:
    """Every GGUF model of the file's roles (or of `roles`) converted now, once (cached), and each role
    that names it pointed at the folder; the problems of all of them at once. Other names are found
    when their role loads."""
    issues, found = [], {}
    for path, role in cfg.roles().items():
        name = role.model_args.model_name_or_path
        if (roles is not None and path not in roles) or not name or not is_gguf(name):
            continue
        key = f"{path}.model_args.model_name_or_path"
        try:
            folder = found[name] if name in found else resolve_model_path(name, key)
        except UserError as e:
            issues.append(Issue(key, str(e).removeprefix(f"{key}: ")))
            continue
        found[name] = role.model_args.model_name_or_path = folder
    return issues

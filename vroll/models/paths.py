"""Where a role's model lives: a local folder, or a Hugging Face id already in the local cache."""

from __future__ import annotations

from pathlib import Path

from vroll.config.errors import UserError


class ModelNotFound(UserError, FileNotFoundError):
    pass


def resolve_model_path(name: str, key: str) -> str:
    """The folder or cached id to load; vroll never downloads. `key` names the setting in errors."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return name
    except Exception:  # not a valid repo id
        pass
    raise ModelNotFound(
        f"{key}: {name!r} is neither a local model folder nor a model in the Hugging Face cache. "
        "Build the tiny model with `vroll tiny-model --out models/tiny`, or download the model first."
    )

"""A local model folder checked before anything loads it: readable JSON files, a tokenizer, weights
whose headers match their sizes. Cheap (no weights are read) and free of torch; where a job imports
transformers anyway, also whether transformers can read the config and the tokenizer (`load`)."""

from __future__ import annotations

import json
from pathlib import Path

from vroll.config.errors import Issue
from vroll.models.gguf import converted_folder, gguf_missing, is_converted, is_gguf

JSON_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def folder_problems(folder: str | Path, weights: bool = True) -> list[str]:
    """What keeps the folder from loading, one line each; nothing for a folder that looks whole.
    `weights=False` skips the weights (an engine with `load_format: dummy` does not read them)."""
    folder = Path(folder)
    if not any(folder.iterdir()):
        return [f"{folder} is empty: build or download the model into it (tiny model: "
                f"`vroll tiny-model --out {folder}`)"]
    problems = [p for name in JSON_FILES if (p := json_problem(folder / name))]
    if not (folder / "config.json").is_file():
        problems.append(f"{folder} has no config.json: not a Hugging Face model folder")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): copy the model's "
                        "tokenizer files into it")
    if weights:
        problems += weight_problems(folder)
    return problems


def json_problem(path: Path) -> str | None:
    """Why a JSON file of the folder cannot be read (None when it is absent or fine)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text: re-download or re-save the model"
    except json.JSONDecodeError as e:
        return f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}): re-download or re-save the model"
    return None if isinstance(value, dict) else f"{path}: expected a JSON object, got {type(value).__name__}"


def weight_problems(folder: Path) -> list[str]:
    """Missing weights, missing shards of an index, or safetensors files whose header or size is wrong."""
    files = sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)})
    if not files:
        return [f"{folder} has no weights (*.safetensors or *.bin): the model was not saved completely"]
    problems = []
    for index in folder.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_bytes())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"{index}: not a valid weights index (no weight_map): re-download or re-save the model")
            continue
        problems += [f"{index} names shard {s}, which is missing" for s in sorted(shards)
                     if not (folder / s).is_file()]
    return problems + [p for f in files if f.suffix == ".safetensors" and (p := safetensors_problem(f))]


def safetensors_problem(path: Path) -> str | None:
    """Why safetensors refuses the file (a truncated file's header names more bytes than it holds)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            return None
    except (SafetensorError, OSError) as e:
        return f"{path} is truncated or corrupt ({e}): re-download or re-save the model"


def transformers_problems(folder: Path, trust_remote_code: bool = False) -> list[str]:
    """What transformers refuses in a folder whose files look whole: a config of an architecture it
    does not know, a tokenizer file that is JSON but not a tokenizer (the engine and the trainer would
    fail with a traceback once started). Imports transformers."""
    from transformers import AutoConfig, AutoTokenizer

    problems = []
    for what, load in (("config", AutoConfig), ("tokenizer", AutoTokenizer)):
        try:
            load.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except Exception as e:  # transformers raises many kinds (ValueError, KeyError, OSError, ...)
            why = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
            problems.append(f"{folder}: transformers cannot read its {what} ({type(e).__name__}: {why}): "
                            "re-download or re-save the model, or update transformers if the model is newer")
            break  # the tokenizer is read with the config: one message is enough
    return problems


def model_folder_issues(cfg, load: bool = False) -> list[Issue]:
    """One issue per problem of every local model folder the file's roles name (each folder checked once);
    `load`: also `transformers_problems` (imports transformers)."""
    issues, seen = [], set()
    for path, role in cfg.roles().items():
        name = role.model_args.model_name_or_path
        if getattr(role, "reward_type", "model") != "model" or not name:
            continue  # rule-based rewards load no model
        if is_gguf(name):
            problem, folder = gguf_problem(name)
            if problem:
                issues.append(Issue(f"{path}.model_args.model_name_or_path", problem))
                continue
            if folder is None:  # converted when the job starts
                continue
        else:
            folder = Path(name).expanduser()
        dummy = role.strategy_args is not None and role.strategy_args.strategy_config.get("load_format") == "dummy"
        if not folder.is_dir() or (folder, dummy) in seen:
            continue
        seen.add((folder, dummy))
        problems = folder_problems(folder, not dummy)
        if load and not problems:
            problems = transformers_problems(folder, role.model_args.trust_remote_code)
        issues += [Issue(f"{path}.model_args.model_name_or_path", p) for p in problems]
        if not problems and role.strategy_args is not None and role.strategy_args.strategy_name == "vllm":
            issues += context_issues(path, role, folder)
    return issues


def gguf_problem(name: str) -> tuple[str | None, Path | None]:
    """(what stops a GGUF file from being converted, or None; its converted folder when there is one)."""
    path = Path(name).expanduser()
    if not path.is_file():
        return f"{name!r} was read as a GGUF file (it ends in .gguf), and there is no such file", None
    folder = converted_folder(path)
    if is_converted(folder):
        return None, folder
    missing = gguf_missing()
    return (f"{name!r} is a GGUF file; {missing}" if missing else None), None


def context_issues(path: str, role, folder: Path) -> list[Issue]:
    """vLLM refuses a `max_model_len` beyond the model's positions (`max_position_embeddings`) once its
    engine starts; say so before, at the key."""
    asked = role.strategy_args.strategy_config.get("max_model_len")
    try:
        positions = json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return []
    if isinstance(asked, int) and isinstance(positions, int) and asked > positions:
        return [Issue(f"{path}.strategy_args.strategy_config.max_model_len",
                      f"{asked} is more than the model's {positions} positions (max_position_embeddings in "
                      f"{folder / 'config.json'}): use at most {positions}")]
    return []

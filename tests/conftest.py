"""Shared fixtures: the offline tiny model (built once per session) and helpers for the reference."""

from __future__ import annotations

import os

import pytest

# Engines run in this process (fast start, no spawn) and quietly.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from vroll.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def engine_config(model_path: str, **strategy_config) -> dict:
    """A minimal valid file for one vllm actor_infer role on the tiny model (fp32, CPU-sized)."""
    sc = {"block_size": 32, "max_model_len": 256, "kv_cache_memory_bytes": 64 << 20, "enforce_eager": True}
    sc.update(strategy_config)
    return {
        "seed": 7,
        "pretrain": model_path,
        "actor_infer": {
            "model_args": {"dtype": "fp32"},
            "generating_args": {"max_new_tokens": 16, "temperature": 0.0},
            "strategy_args": {"strategy_name": "vllm", "strategy_config": sc},
            "device_mapping": [0],
        },
    }


def write_yaml(path, data) -> str:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)

"""Shared fixtures: the offline tiny model (built once per session) and helpers for the reference."""

from __future__ import annotations

import os
from contextlib import contextmanager

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


@pytest.fixture(scope="module")
def hf(tiny_model):
    """The transformers reference on the same weights, fresh per test module (tests may perturb it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model)


def hf_greedy(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation of `ids`, with every setting explicit (the tiny model's
    generation_config.json asks for sampling, as real models' do)."""
    import torch
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, repetition_penalty=1.0,
                          eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), generation_config=gc, attention_mask=torch.ones(1, len(ids),
                                                                                                 dtype=torch.long))
    return out[0, len(ids):].tolist()


def hf_greedy_texts(hf, texts, max_new_tokens: int) -> list[list[int]]:
    model, tok = hf
    return [hf_greedy(model, tok(t)["input_ids"], max_new_tokens) for t in texts]


def interruptible() -> None:
    """`preexec_fn` of a child a test sends Ctrl-C to: a process started in the background from a
    non-interactive shell (as CI may run) inherits SIGINT as ignored, and would never see it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def non_loopback_listeners(pids) -> list[str]:
    """The TCP sockets these processes listen on at an address other than the loopback one
    (IPv4-mapped IPv6 loopback counts as loopback; `::` and `0.0.0.0` do not)."""
    import ipaddress

    import psutil

    pids, found = set(pids), []
    for c in psutil.net_connections("tcp"):
        if c.status != psutil.CONN_LISTEN or c.pid not in pids:
            continue
        ip = ipaddress.ip_address(c.laddr.ip.split("%")[0])
        if not (ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped and ip.ipv4_mapped.is_loopback)):
            try:
                name = psutil.Process(c.pid).name()
            except psutil.Error:
                name = "?"
            found.append(f"{name} (pid {c.pid}) on {c.laddr.ip}:{c.laddr.port}")
    return found


def assert_gone_within(processes, seconds: float = 10.0) -> None:
    """Every one of these psutil processes has exited (zombies count as gone) within `seconds`."""
    import time

    import psutil

    def alive():
        return [f"{p.name()} (pid {p.pid})" for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    start = time.monotonic()
    while alive() and time.monotonic() - start < seconds:
        time.sleep(0.2)
    assert alive() == [], f"still running {seconds:g} s after the driver was killed: {alive()}"


@contextmanager
def local_http_server(handler):
    """A stand-in service on 127.0.0.1 (a free port) answering with `handler`, in a thread; yields its
    base URL and shuts down after."""
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()

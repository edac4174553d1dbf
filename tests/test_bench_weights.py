"""bench/bench_weights.py counts a tied weight once, as the trainer sends it."""

import sys

from conftest import REPO

sys.path.insert(0, f"{REPO}/bench")


def test_tied_embeddings_are_counted_once(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from bench_weights import state_bytes, unique_storages

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert model.config.tie_word_embeddings
    state, aliases = unique_storages(model.state_dict())
    assert aliases == ["lm_head.weight"] and "model.embed_tokens.weight" in state
    assert state_bytes(state) == sum(p.numel() * 4 for p in model.parameters())  # parameters() dedupes too
    assert state_bytes(state) < state_bytes(model.state_dict())
    a, b = torch.zeros(4), torch.zeros(4)  # equal values, separate storages: both kept
    assert unique_storages({"a": a, "b": b, "a2": a}) == ({"a": a, "b": b}, ["a2"])

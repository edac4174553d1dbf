"""The offline tiny model: deterministic, standard Hugging Face folder, vLLM-compatible shapes."""

import json

import torch
from safetensors.torch import load_file

from vroll.models.tiny import TinySpec, build_tiny_model


def test_same_seed_same_model_other_seed_other_weights(tmp_path, tiny_model):
    again = build_tiny_model(tmp_path / "again")
    other = build_tiny_model(tmp_path / "other", TinySpec(seed=1))
    a = load_file(f"{tiny_model}/model.safetensors")
    b = load_file(f"{again}/model.safetensors")
    c = load_file(f"{other}/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert open(f"{tiny_model}/tokenizer.json").read() == open(f"{again}/tokenizer.json").read()


def test_loads_with_transformers_and_has_head_dim_64(tiny_model):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_model)
    assert cfg.model_type == "qwen2"
    assert cfg.hidden_size // cfg.num_attention_heads == 64  # vLLM's CPU attention rejects 16
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 2e7
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "What is 123+45? The answer is 168."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert [tok.decode([t]) for t in tok("123")["input_ids"]] == ["1", "2", "3"]  # digits split
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 1+1?"}], add_generation_prompt=True,
                                   tokenize=False)
    assert chat == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"
    assert json.load(open(f"{tiny_model}/generation_config.json"))["do_sample"] is True

"""The vllm strategy on the real engine (CPU build), checked against transformers on the same weights."""

import pytest
import torch

from conftest import engine_config, hf_greedy, write_yaml
from vroll.config import load_config
from vroll.config.schema import GeneratingArgs
from vroll.roles.launcher import launch_role
from vroll.strategy.prompts import PromptError

PROMPTS = ["What is 12+7?", "What is 45-18? The answer is", "What is 6*7?", "hello there"]


def start(tmp_path, model, seed=None, **strategy_config):
    data = engine_config(model, **strategy_config)
    if seed is not None:
        data["seed"] = seed
    cfg = load_config(write_yaml(tmp_path / "engine.yaml", data), platform="cpu")
    return launch_role(cfg.actor_infer, seed=cfg.seed)


@pytest.fixture(scope="module")
def strategy(tiny_model, tmp_path_factory):
    s = start(tmp_path_factory.mktemp("engine"), tiny_model)
    yield s
    s.close()


def hf_token_logprobs(model, prompt_ids, response_ids, temperature=1.0):
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response_ids)[:, None])[:, 0]


def test_greedy_equals_transformers_token_for_token(strategy, hf):
    model, tok = hf
    g = GeneratingArgs(max_new_tokens=24, temperature=0.0)
    results = strategy.generate(PROMPTS, g)
    assert [r.index for r in results] == list(range(len(PROMPTS)))
    for text, r in zip(PROMPTS, results):
        ids = tok(text)["input_ids"]
        assert r.prompt_token_ids == ids and r.prompt == text
        (sample,) = r.samples
        assert sample.token_ids == hf_greedy(model, ids, 24)
        assert sample.finish_reason in ("stop", "length")


def test_generation_config_of_the_model_is_not_inherited(strategy, tiny_model):
    # The folder ships temperature 0.7 / top_k 20 / repetition_penalty 1.05: a temperature-0 request
    # that inherited the penalty would differ from plain greedy (checked against transformers above).
    import json

    shipped = json.load(open(f"{tiny_model}/generation_config.json"))
    assert shipped["repetition_penalty"] == 1.05
    r = strategy.generate(["What is 12+7?"], GeneratingArgs(max_new_tokens=8, temperature=0.0))
    r2 = strategy.generate(["What is 12+7?"], GeneratingArgs(max_new_tokens=8, temperature=0.0, repetition_penalty=1.05))
    assert r[0].samples[0].token_ids != r2[0].samples[0].token_ids or len(set(r[0].samples[0].token_ids)) == 8


def test_n_samples_per_prompt_differ(strategy):
    g = GeneratingArgs(max_new_tokens=12, temperature=1.0, num_return_sequences=4)
    results = strategy.generate(PROMPTS[:3], g)
    for r in results:
        assert len(r.samples) == 4
        assert len({tuple(s.token_ids) for s in r.samples}) == 4


def test_sampling_is_reproducible_across_runs(tiny_model, tmp_path):
    g = GeneratingArgs(max_new_tokens=12, temperature=1.0, top_p=0.95, num_return_sequences=2)

    def run(seed):
        with start(tmp_path, tiny_model, seed=seed) as s:  # a fresh engine each time
            return [[smp.token_ids for smp in r.samples] for r in s.generate(PROMPTS, g)]

    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_beam_search_returns_best_beams_like_transformers(strategy, hf):
    model, tok = hf
    g = GeneratingArgs(max_new_tokens=6, temperature=0.0, num_beams=3, num_return_sequences=2, ignore_eos=True,
                       logprobs=True)
    (r,) = strategy.generate(["What is 6*7?"], g)
    assert len(r.samples) == 2
    ids = tok("What is 6*7?")["input_ids"]
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=False, num_beams=3, num_return_sequences=2, max_new_tokens=6, min_new_tokens=6,
                          length_penalty=1.0, early_stopping=True, repetition_penalty=1.0,
                          eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), generation_config=gc)[:, len(ids):].tolist()
    assert r.samples[0].token_ids == ref[0]
    scores = [sum(s.logprobs) for s in r.samples]
    assert scores == sorted(scores, reverse=True)


def test_chat_messages_and_token_ids_are_prompts_too(strategy, hf):
    model, tok = hf
    messages = [{"role": "user", "content": "What is 6*7?"}]
    chat_ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]
    g = GeneratingArgs(max_new_tokens=10, temperature=0.0)
    by_chat, by_ids, by_dict = strategy.generate([messages, chat_ids, {"prompt_token_ids": chat_ids}], g)
    assert by_chat.prompt_token_ids == chat_ids
    assert by_chat.prompt.endswith("<|im_start|>assistant\n")
    assert by_chat.samples[0].token_ids == by_ids.samples[0].token_ids == by_dict.samples[0].token_ids
    assert by_ids.samples[0].token_ids == hf_greedy(model, chat_ids, 10)


def test_stop_strings_and_stop_token_ids(strategy, tok_and_greedy):
    tok, ids = tok_and_greedy
    g = GeneratingArgs(max_new_tokens=20, temperature=0.0, stop_token_ids=[ids[5]])
    (r,) = strategy.generate(["What is 12+7?"], g)
    assert r.samples[0].token_ids == ids[:ids.index(ids[5]) + 1]
    assert r.samples[0].finish_reason == "stop"
    # a stop string taken from the greedy text: the returned text ends just before it
    full = tok.decode(ids)
    k = next(k for k in range(4, len(ids)) if tok.decode(ids[k:k + 1]).isalnum()
             and full.find(tok.decode(ids[k:k + 1])) == len(tok.decode(ids[:k])))
    stop = tok.decode(ids[k:k + 1])
    g = GeneratingArgs(max_new_tokens=20, temperature=0.0, stop_strings=[stop])
    (r,) = strategy.generate(["What is 12+7?"], g)
    assert r.samples[0].text == full[:full.find(stop)]
    assert r.samples[0].finish_reason == "stop"


@pytest.fixture(scope="module")
def tok_and_greedy(strategy, hf):
    model, tok = hf
    (r,) = strategy.generate(["What is 12+7?"], GeneratingArgs(max_new_tokens=20, temperature=0.0, ignore_eos=True))
    return tok, r.samples[0].token_ids


def test_sampled_token_logprobs_match_transformers(strategy, hf):
    model, _ = hf
    g = GeneratingArgs(max_new_tokens=16, temperature=0.8, num_return_sequences=2, logprobs=True)
    for r in strategy.generate(PROMPTS[:2], g):
        for s in r.samples:
            ref = hf_token_logprobs(model, r.prompt_token_ids, s.token_ids)  # raw: before temperature
            assert torch.allclose(torch.tensor(s.logprobs), ref, atol=1e-3), (s.logprobs, ref)


def test_processed_logprobs_mode_applies_temperature(tiny_model, hf, tmp_path):
    model, _ = hf
    with start(tmp_path, tiny_model, logprobs_mode="processed_logprobs") as s:
        g = GeneratingArgs(max_new_tokens=12, temperature=0.7, logprobs=True)
        (r,) = s.generate(["What is 12+7?"], g)
    ref = hf_token_logprobs(model, r.prompt_token_ids, r.samples[0].token_ids, temperature=0.7)
    assert torch.allclose(torch.tensor(r.samples[0].logprobs), ref, atol=1e-3)


def test_forward_only_logprobs_match_transformers(strategy, hf):
    model, tok = hf
    seqs = [tok(p)["input_ids"] for p in PROMPTS]
    got = strategy.sequence_logprobs(seqs)  # micro-batches of infer_batch_size (1 here)
    for seq, lp in zip(seqs, got):
        ref = hf_token_logprobs(model, seq[:1], seq[1:])
        assert torch.allclose(torch.tensor(lp), ref, atol=1e-3)


def test_prompts_that_cannot_fit(strategy):
    long = list(range(10, 10 + 250))  # 250 tokens + 16 new > max_model_len 256
    g = GeneratingArgs(max_new_tokens=16, temperature=0.0)
    with pytest.raises(PromptError, match=r"prompt 1 has 250 tokens \+ max_new_tokens 16 > max_model_len 256"):
        strategy.generate(["What is 1+1?", long], g)
    skipped = strategy.generate(["What is 1+1?", long], g, prompt_overflow="skip")
    assert [r.status for r in skipped] == ["ok", "skipped"] and skipped[1].samples == []
    cut = strategy.generate(["What is 1+1?", long], g, prompt_overflow="truncate")
    assert cut[1].status == "truncated" and cut[1].prompt_token_ids == long[-240:]
    assert len(cut[1].samples) == 1


def test_malformed_prompts_name_their_index(strategy):
    with pytest.raises(PromptError, match="prompt 1: token ids .* outside the vocabulary"):
        strategy.generate(["ok", [1, 10**6]])
    with pytest.raises(PromptError, match="prompt 0: expected text, chat messages or token ids"):
        strategy.generate([3.5])


def test_padded_batch_for_a_trainer(strategy):
    g = GeneratingArgs(max_new_tokens=8, temperature=1.0, num_return_sequences=2, logprobs=True)
    results = strategy.generate(PROMPTS[:3], g)
    batch = strategy.to_batch(results)
    assert batch["input_ids"].shape[0] == 6
    for row, (r, s) in enumerate((r, s) for r in results for s in r.samples):
        mask = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][mask].tolist() == r.prompt_token_ids + s.token_ids
        resp = batch["response_mask"][row].bool()
        assert batch["input_ids"][row][resp].tolist() == s.token_ids
        assert torch.allclose(batch["logprobs"][row, :len(s.token_ids)], torch.tensor(s.logprobs))
        assert batch["prompt_index"][row] == r.index


def test_results_carry_the_weight_version(strategy):
    (r,) = strategy.generate(["hi"], GeneratingArgs(max_new_tokens=2))
    assert r.weight_version == strategy.weight_version == 0
    assert r.samples[0].token_versions == [0] * len(r.samples[0].token_ids)  # per token, as streamed ones


def test_closed_strategy_refuses_work(tiny_model, tmp_path):
    s = start(tmp_path, tiny_model)
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError, match="engine is closed"):
        s.generate(["hi"])


def test_vllm_version_is_checked():
    from vroll.strategy.vllm_compat import UnsupportedVllm, check_vllm_version

    assert check_vllm_version().startswith("0.32")
    with pytest.raises(UnsupportedVllm, match=r"vLLM 0.31.2 is installed, but vroll supports vllm"):
        check_vllm_version("0.31.2")
    with pytest.raises(UnsupportedVllm, match="vLLM is not installed"):
        check_vllm_version("")


def test_memory_plan_matches_the_engines_kv_cache(strategy, tiny_model, tmp_path):
    from vroll.config.memory import plan_memory

    cfg = load_config(write_yaml(tmp_path / "engine.yaml", engine_config(tiny_model)), platform="cpu")
    plan = plan_memory(cfg)
    cache = strategy.llm.llm_engine.vllm_config.cache_config
    assert plan.kv_tokens == cache.num_gpu_blocks * cache.block_size  # vLLM's own count
    assert plan.max_model_len == strategy.max_model_len == 256
    assert plan.parameters == sum(p.numel() for p in hf_params(tiny_model))


def hf_params(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).parameters()


def test_seeded_sampling_survives_chunked_prefill(tiny_model, tmp_path):
    # vLLM 0.32 on CPU crashed ("CPU Generator does not use offset") when a seeded request's prefill
    # was split into chunks; vroll seeds every request (see vllm_compat.patch_cpu_seeded_sampling).
    long_prompt = list(range(10, 130))  # 120 tokens, prefilled in chunks of 32
    g = GeneratingArgs(max_new_tokens=8, temperature=1.0, num_return_sequences=2)
    with start(tmp_path, tiny_model, max_num_batched_tokens=32) as s:
        results = s.generate([long_prompt, "What is 1+1?", long_prompt], g)
        assert [len(r.samples) for r in results] == [2, 2, 2]
        assert s.llm.llm_engine.get_num_unfinished_requests() == 0


def engine_model(strategy):
    return strategy.llm.collective_rpc(lambda worker: worker.model_runner.model)[0]


def test_a_reload_prepares_only_the_modules_that_receive_weights(strategy):
    from vroll.strategy.vllm_compat import receiving_modules

    model = engine_model(strategy)
    names = ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
             "model.layers.1.input_layernorm.weight", "model.embed_tokens.weight"]
    got = receiving_modules(model, names)
    assert got == [model.model.embed_tokens, model.model.layers[1].input_layernorm,
                   model.model.layers[1].self_attn]  # q/k go to the fused qkv_proj below self_attn
    assert receiving_modules(model, ["model.layers.1.weight", "model.layers.1.mlp.up_proj.weight"]) == \
        [model.model.layers[1]]  # an outer scope holds the inner one
    assert receiving_modules(model, ["language_model.layers.0.mlp.up_proj.weight"]) == [model]


def test_an_update_packs_every_matmul_weight_once_and_not_the_input_embedding(strategy, hf, monkeypatch):
    # vLLM 0.32 CPU packs the input embedding for matmuls it never does (vllm_compat.patch_cpu_embedding_pack)
    import vllm._custom_ops as ops

    model, tok = hf
    packed = []
    create = ops.create_onednn_mm
    monkeypatch.setattr(ops, "create_onednn_mm", lambda w, *a: packed.append(tuple(w.shape)) or create(w, *a))
    strategy.update_weights(dict(model.named_parameters()))  # the checkpoint's own weights: nothing changes
    cfg = model.config
    linears = 4 * cfg.num_hidden_layers  # qkv, o, gate_up, down
    assert cfg.tie_word_embeddings and len(packed) == linears + 1  # + the tied lm_head, packed at finish
    from vllm.model_executor.layers.vocab_parallel_embedding import pad_vocab_size

    assert packed.count((cfg.hidden_size, pad_vocab_size(cfg.vocab_size))) == 1  # [K, N], vLLM's padded vocabulary
    g = GeneratingArgs(max_new_tokens=12, temperature=0.0)
    for text, r in zip(PROMPTS, strategy.generate(PROMPTS, g)):
        assert r.samples[0].token_ids == hf_greedy(model, tok(text)["input_ids"], 12)


def test_a_cpu_update_refuses_part_of_a_fused_layer_and_the_layer_keeps_its_weights(strategy, hf):
    # vllm_compat.CpuRepackReload: q/k/v exist only packed together, so q alone cannot be applied
    model, tok = hf
    assert strategy.llm.collective_rpc(lambda w: type(w.weight_transfer_engine.reloader).__name__) == \
        ["CpuRepackReload"]
    strategy.update_weights(dict(model.named_parameters()))
    q = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(RuntimeError, match=r"only part of their weight in one bucket: model\.layers\.0\.self_attn"
                                           r"\.qkv_proj \(\d+ of \d+ values\)"):
        strategy.update_weights([(q, torch.zeros_like(model.get_parameter(q)))], partial=True)
    layer = engine_model(strategy).model.layers[0].self_attn.qkv_proj
    assert layer.weight.numel() == 0 and layer.cpu_linear.__name__ != "_released"  # its packed weights, as before
    assert not strategy.state.weights_valid  # until a complete update
    strategy.update_weights(dict(model.named_parameters()))
    g = GeneratingArgs(max_new_tokens=12, temperature=0.0)
    for text, r in zip(PROMPTS, strategy.generate(PROMPTS, g)):
        assert r.samples[0].token_ids == hf_greedy(model, tok(text)["input_ids"], 12)

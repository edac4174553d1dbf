"""Weight updates, `load_format: dummy` and sleep/wake on the real engine, checked against
transformers' greedy output on the same weights."""

from dataclasses import replace

import pytest
import torch

from conftest import engine_config, hf_greedy_texts, write_yaml
from vroll.config import load_config
from vroll.config.schema import GeneratingArgs
from vroll.roles.launcher import launch_role
from vroll.strategy.engine_state import EngineStateError
from vroll.strategy.weights import WeightUpdateError

PROMPTS = ["What is 12+7?", "What is 45-18? The answer is", "hello there"]
GREEDY = GeneratingArgs(max_new_tokens=16, temperature=0.0)
KV_BYTES = 256 << 20


def start(tmp_path, model, **strategy_config):
    cfg = load_config(write_yaml(tmp_path / "engine.yaml", engine_config(model, **strategy_config)), platform="cpu")
    return launch_role(cfg.actor_infer, seed=cfg.seed)


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory):
    s = start(tmp_path_factory.mktemp("engine"), tiny_model, kv_cache_memory_bytes=KV_BYTES)
    yield s
    s.close()


def hf_greedy_all(hf, max_new_tokens=16):
    return hf_greedy_texts(hf, PROMPTS, max_new_tokens)


def engine_greedy(engine):
    return [r.samples[0].token_ids for r in engine.generate(PROMPTS, GREEDY)]


def perturb(model, seed, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_update_makes_greedy_output_equal_transformers_on_new_weights(engine, hf):
    model, _ = hf
    before = engine_greedy(engine)
    assert before == hf_greedy_all(hf)
    v0 = engine.weight_version
    perturb(model, seed=1)
    expected = hf_greedy_all(hf)
    assert expected != before  # the perturbation changes what greedy decoding produces
    # named_parameters() leaves out the tied lm_head: the engine must still use the new embedding
    assert engine.update_weights(list(model.named_parameters())) == v0 + 1
    results = engine.generate(PROMPTS, GREEDY)
    assert [r.samples[0].token_ids for r in results] == expected
    assert all(r.weight_version == v0 + 1 for r in results)
    perturb(model, seed=2)  # a second update, from state_dict() this time, streamed in small buckets
    engine.options = replace(engine.options, weight_update_bucket_bytes=1 << 20)
    try:
        engine.update_weights((k, v) for k, v in model.state_dict().items())
    finally:
        engine.options = replace(engine.options, weight_update_bucket_bytes=256 << 20)
    assert engine_greedy(engine) == hf_greedy_all(hf)


def test_wrong_name_or_shape_is_refused_and_previous_weights_stay(engine, hf):
    model, _ = hf
    before = engine_greedy(engine)
    version = engine.weight_version
    bad_name = dict(model.state_dict())
    bad_name["model.layers.0.mlp.gate_prj.weight"] = bad_name.pop("model.layers.0.mlp.gate_proj.weight")
    with pytest.raises(WeightUpdateError) as e:
        engine.update_weights(bad_name)
    assert "model.layers.0.mlp.gate_prj.weight: the model has no parameter of this name (did you mean " \
           "'model.layers.0.mlp.gate_proj.weight'?)" in str(e.value)
    assert "nothing was written" in str(e.value)
    bad_shape = dict(model.state_dict())
    bad_shape["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(WeightUpdateError, match=r"model.layers.1.self_attn.q_proj.weight: shape \(3, 3\) does not "
                                                r"match the model's \(256, 256\)"):
        engine.update_weights(bad_shape)
    assert engine.weight_version == version
    assert engine.state.name == "serving"
    assert engine_greedy(engine) == before


def test_failure_half_way_invalidates_until_a_complete_update(engine, hf):
    model, _ = hf

    def stream_with_a_bad_tensor():
        for i, (k, v) in enumerate(model.state_dict().items()):
            yield (k, torch.zeros(2) if i == 30 else v)

    engine.options = replace(engine.options, weight_update_bucket_bytes=1 << 20)
    try:
        with pytest.raises(WeightUpdateError, match="weights now invalid"):
            engine.update_weights(stream_with_a_bad_tensor())
    finally:
        engine.options = replace(engine.options, weight_update_bucket_bytes=256 << 20)
    assert engine.state.name == "weights invalid"
    with pytest.raises(EngineStateError, match="cannot generate: the engine is weights invalid; the last weight "
                                               "update failed half-way"):
        engine.generate(PROMPTS, GREEDY)
    with pytest.raises(WeightUpdateError, match="a partial update cannot repair invalid weights"):
        engine.update_weights(list(model.named_parameters())[:3], partial=True)
    engine.update_weights(model.state_dict(), verify=True)
    assert engine.state.name == "serving"
    assert engine_greedy(engine) == hf_greedy_all(hf)


def test_an_update_has_a_deadline(engine, hf):
    import time

    model, _ = hf

    def stalling_sender():  # sends a few layers, then slows to a crawl
        for i, (k, v) in enumerate(model.state_dict().items()):
            if i > 20:
                time.sleep(0.1)
            yield k, v

    engine.options = replace(engine.options, weight_update_bucket_bytes=1 << 20)
    try:
        with pytest.raises(TimeoutError, match="deadline"):
            engine.update_weights(stalling_sender(), timeout_s=0.5)
    finally:
        engine.options = replace(engine.options, weight_update_bucket_bytes=256 << 20)
    assert engine.state.name == "weights invalid"
    engine.update_weights(model.state_dict())
    assert engine_greedy(engine) == hf_greedy_all(hf)


def test_partial_update_of_a_valid_engine(engine, hf):
    model, _ = hf
    norm = [(k, v) for k, v in model.state_dict().items() if k == "model.norm.weight"]
    with pytest.raises(WeightUpdateError, match="missing from a complete update"):
        engine.update_weights(norm)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    engine.update_weights([("model.norm.weight", model.model.norm.weight)], partial=True)
    assert engine_greedy(engine) == hf_greedy_all(hf)


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_sleep_wake_cycles_release_memory_and_stay_correct(engine, hf):
    model, _ = hf
    expected = hf_greedy_all(hf)
    assert engine.kv_cache_bytes() == KV_BYTES
    weight_bytes = engine.weight_bytes()
    assert weight_bytes == 4 * sum(p.numel() for p in model.parameters())
    for cycle in range(2):
        # level 1: the KV cache goes, the weights stay; on CPU its pages go back to the OS, and come
        # back (as zeros) only where the next generation writes
        before, resident = rss(), engine.kv_cache_resident_bytes()
        (report,) = engine.sleep(1)  # one report per engine
        assert report["expected_bytes"] == resident
        assert engine.kv_cache_resident_bytes() < 2 * 4096  # at most the pages it shares at its ends
        if cycle == 0:  # allocated zeroed at start: all of it was in memory, and the process shows it gone
            # (later cycles hold only the greedy generation's few blocks, below the noise of the RSS)
            assert resident > 0.99 * KV_BYTES
            assert before - rss() > 0.9 * resident, (before, rss(), resident)
            assert report["released_bytes"] > 0.9 * resident
        assert engine.state.name.startswith("asleep (level 1")
        with pytest.raises(EngineStateError, match=r"cannot generate: the engine is asleep \(level 1"):
            engine.generate(PROMPTS, GREEDY)
        assert engine.sleep(1) == [{}]  # a second sleep is a documented no-op
        engine.wake_up()
        assert engine_greedy(engine) == expected

        # level 2: weights go too; waking needs an update before generating
        before, resident = rss(), engine.kv_cache_resident_bytes()
        assert 0 < resident < KV_BYTES  # the greedy generation's blocks only
        engine.sleep(2)
        assert before - rss() > 0.9 * (resident + weight_bytes), (before, rss(), weight_bytes)
        with pytest.raises(EngineStateError, match=r"asleep \(level 2.*call wake_up\(\), then update_weights"):
            engine.generate(PROMPTS, GREEDY)
        with pytest.raises(EngineStateError, match=r"cannot update weights.*wake_up\(tags=\['weights'\]\)"):
            engine.update_weights(model.state_dict())
        engine.wake_up(tags=["weights"])  # staged: weights first, update, then the KV cache
        with pytest.raises(EngineStateError, match=r"KV cache released\), weights invalid; call wake_up\(\) first, and update_weights"):
            engine.generate(PROMPTS, GREEDY)
        perturb(model, seed=10 + cycle)
        expected = hf_greedy_all(hf)
        engine.update_weights(model.state_dict())
        engine.wake_up(tags=["kv_cache"])
        assert engine.state.name == "serving"
        assert engine_greedy(engine) == expected


def test_dummy_load_needs_an_update_then_equals_the_checkpoint(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with start(tmp_path, tiny_model, load_format="dummy") as dummy:
        assert dummy.state.name == "weights invalid"
        with pytest.raises(EngineStateError, match="load_format: dummy started it with random weights"):
            dummy.generate(PROMPTS, GREEDY)
        dummy.update_weights(reference.named_parameters())
        got = engine_greedy(dummy)
    with start(tmp_path, tiny_model) as loaded:
        assert engine_greedy(loaded) == got

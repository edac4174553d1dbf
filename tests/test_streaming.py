"""Generation in the background (the asynchronous pipeline's engine side), on the real engine: groups
resolve exactly once, a weight update mid-generation pauses the samples and continues them on the new
weights from the tokens they had (checked against transformers), every token carries its version."""

import time

import pytest
import torch

from conftest import engine_config, hf_greedy, write_yaml
from vroll.config import load_config
from vroll.config.schema import GeneratingArgs
from vroll.roles.launcher import launch_role

PROMPTS = ["What is 12+7?", "What is 45-18? The answer is", "What is 6*7?", "hello there"]


@pytest.fixture(scope="module")
def engine(tiny_model, tmp_path_factory):
    cfg = load_config(write_yaml(tmp_path_factory.mktemp("engine") / "e.yaml", engine_config(tiny_model)),
                      platform="cpu")
    s = launch_role(cfg.actor_infer, seed=cfg.seed)
    yield s
    s.close()


def ids_of(hf, texts):
    return [hf[1](t)["input_ids"] for t in texts]


def collect_all(engine, n, wait_s=60.0):
    got, deadline = [], time.monotonic() + wait_s
    while len(got) < n and time.monotonic() < deadline:
        got += engine.collect(min_groups=n - len(got), wait_s=1.0)
    return got


def test_groups_resolve_once_and_equal_transformers(engine, hf):
    model, _ = hf
    prompts = ids_of(hf, PROMPTS)
    g = GeneratingArgs(max_new_tokens=12, temperature=0.0, logprobs=True)
    engine.submit([10, 11, 12, 13], prompts, g, call=0)
    got = collect_all(engine, 4)
    assert sorted(r.index for r in got) == [10, 11, 12, 13]
    assert engine.collect(wait_s=0.2) == []  # each group once
    for r in got:
        ids = prompts[r.index - 10]
        assert r.prompt_token_ids == ids
        (s,) = r.samples
        assert s.token_ids == hf_greedy(model, ids, 12)
        assert s.token_versions == [engine.weight_version] * len(s.token_ids)
        assert s.logprobs is not None and len(s.logprobs) == len(s.token_ids)


def test_groups_have_their_samples_and_seeds(engine):
    g = GeneratingArgs(max_new_tokens=8, temperature=1.0, num_return_sequences=4)
    engine.submit([0], [[5, 6, 7]], g, call=3)
    (a,) = collect_all(engine, 1)
    engine.submit([1], [[5, 6, 7]], g, call=3)  # same call, other key: other seeds
    (b,) = collect_all(engine, 1)
    assert len(a.samples) == 4 and len({tuple(s.token_ids) for s in a.samples}) > 1
    assert [s.token_ids for s in a.samples] != [s.token_ids for s in b.samples]


def greedy(model, ids, n):
    """transformers' argmax continuation of `ids`, `n` tokens, EOS ignored (as `ignore_eos`)."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def perturbed(model, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def test_weight_update_mid_generation_continues_on_new_weights(engine, hf):
    """A partial rollout: the tokens before the update are the old weights' greedy choice, the rest
    are the new weights' greedy continuation of prompt + those tokens, token for token."""
    import copy

    old = hf[0]
    new = perturbed(copy.deepcopy(old))
    prompts = ids_of(hf, PROMPTS)
    g = GeneratingArgs(max_new_tokens=64, temperature=0.0, ignore_eos=True)
    v0 = engine.weight_version
    engine.update_weights(old.state_dict())  # the engine serves exactly `old`
    v_old = engine.weight_version
    engine.submit([20, 21, 22, 23], prompts, g, call=1)
    stream = engine._stream
    while True:
        with engine._lock:  # between two engine steps: the loop yields the lock to callers
            if all(s.tokens for gr in stream._groups.values() for s in gr.samples):
                engine.update_weights(new.state_dict())
                break
    got = {r.index: r for r in collect_all(engine, 4)}
    assert sorted(got) == [20, 21, 22, 23] and v_old == v0 + 1
    resumed = 0
    for key, ids in zip([20, 21, 22, 23], prompts):
        (s,) = got[key].samples
        assert len(s.token_ids) == 64
        k = s.token_versions.count(v_old)
        assert s.token_versions == [v_old] * k + [v_old + 1] * (64 - k) and k >= 1
        assert s.token_ids[:k] == greedy(old, ids, k)
        if k < 64:
            resumed += 1
            assert s.token_ids[k:] == greedy(new, ids + s.token_ids[:k], 64 - k)
    assert resumed >= 1
    assert engine.stream_report()["resumed_samples"] >= resumed


def test_foreground_generation_pauses_the_stream(engine, hf):
    """A validation pass while groups are in flight: both come out whole, the stream's samples equal
    an undisturbed greedy run."""
    model = hf[0]
    engine.update_weights(model.state_dict())
    prompts = ids_of(hf, PROMPTS)
    g = GeneratingArgs(max_new_tokens=48, temperature=0.0, ignore_eos=True)
    engine.submit([30, 31], prompts[:2], g, call=2)
    fore = engine.generate(PROMPTS[2:], GeneratingArgs(max_new_tokens=8, temperature=0.0))
    assert [len(r.samples[0].token_ids) for r in fore] == [8, 8] or all(r.samples for r in fore)
    got = {r.index: r for r in collect_all(engine, 2)}
    for key, ids in zip([30, 31], prompts[:2]):
        assert got[key].samples[0].token_ids == greedy(model, ids, 48)


def test_a_group_whose_prompt_cannot_fit_is_refused_before_anything_is_submitted(engine):
    g = GeneratingArgs(max_new_tokens=2, temperature=0.0)
    room = engine.max_model_len - 2  # the prompt rule every check uses (strategy.prompts.prompt_room)
    with pytest.raises(ValueError, match="prompt of group 51 plus max_new_tokens 2 exceeds max_model_len"):
        engine.submit([50, 51], [[5] * room, [5] * (room + 1)], g, call=5)
    assert engine.collect(wait_s=0.3) == []  # neither group went in
    engine.submit([52], [[5] * room], g, call=5)  # exactly the room: accepted
    assert [r.index for r in collect_all(engine, 1)] == [52]


def test_dropped_groups_never_come_back(engine, hf):
    g = GeneratingArgs(max_new_tokens=48, temperature=0.0, ignore_eos=True)
    engine.submit([40, 41], ids_of(hf, PROMPTS[:2]), g, call=4)
    assert engine.drop([40]) == 1
    got = collect_all(engine, 1)
    assert [r.index for r in got] == [41]
    assert engine.collect(wait_s=0.3) == []


def test_a_failing_engine_step_reaches_the_collector_not_a_hang():
    """The loop's failure (here a stand-in engine whose step raises: the path under test is vroll's)
    is raised by `collect` at once, naming the engine."""
    from types import SimpleNamespace

    from vroll.strategy.streaming import EngineLock, RolloutStream

    def step():
        raise RuntimeError("engine core died")

    llm = SimpleNamespace(llm_engine=SimpleNamespace(add_request=lambda *a: None, step=step,
                                                     abort_request=lambda ids: None))
    stream = RolloutStream(llm, EngineLock(), lambda: 0, lambda g, seed, done: None, "actor_infer", 1)
    stream.submit([1], [[5, 6]], GeneratingArgs(max_new_tokens=4), [0])
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="actor_infer: background generation failed: engine core died"):
        stream.collect(min_groups=1, wait_s=30)
    assert time.monotonic() - started < 5

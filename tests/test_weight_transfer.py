"""Weights into running engines through vLLM's weight-transfer protocol (init, start, update, finish
with the weight version): vroll's `vroll_shm` transport on CPU, for an engine on Ray and in this
process, checked against transformers on the same new weights."""

import pytest
import torch

from conftest import engine_config, hf_greedy_texts, write_yaml
from vroll.config import load_config
from vroll.config.schema import GeneratingArgs
from vroll.strategy import shm_transfer

PROMPTS = ["What is 12+7?", "hello there", "What is 6*7? The answer is"]
GREEDY = GeneratingArgs(max_new_tokens=12, temperature=0.0)


def role(tmp_path, model, mapping):
    data = engine_config(model, engine_call_timeout_s=120)
    data["actor_infer"]["device_mapping"] = mapping
    return load_config(write_yaml(tmp_path / "c.yaml", data), platform="cpu")


def perturb(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def tokens(results):
    return [r.samples[0].token_ids for r in results]


def no_stray_segments(engines=None):
    """No vroll name in /dev/shm, and every segment this process holds is one of the pool's."""
    assert shm_transfer.named_leftovers() == []
    held = sorted(engines._segments.live()) if engines is not None else []
    assert shm_transfer.open_segments() == held


@pytest.fixture(scope="module")
def on_ray(tiny_model, tmp_path_factory):
    from vroll.roles.ray_engines import RayEngines

    cfg = role(tmp_path_factory.mktemp("ray"), tiny_model, [1])
    engines = RayEngines(cfg.actor_infer, seed=cfg.seed)
    yield engines
    engines.close()


@pytest.fixture(scope="module")
def here(tiny_model, tmp_path_factory):
    from vroll.strategy.vllm_strategy import VllmStrategy

    cfg = role(tmp_path_factory.mktemp("here"), tiny_model, [0])
    engine = VllmStrategy(cfg.actor_infer, seed=cfg.seed)
    yield engine
    engine.close()


# -- engines ------------------------------------------------------------------------------------

def test_an_engine_on_ray_on_this_node_gets_weights_through_shared_memory(on_ray, hf):
    model, tok = hf
    assert on_ray.transport() == "vroll_shm"
    perturb(model, 11)
    version = on_ray.update_weights(model.state_dict(), verify=True)
    no_stray_segments(on_ray)
    assert [i["weight_version"] for i in on_ray.info()] == [version]
    results = on_ray.generate(PROMPTS, GREEDY)
    assert tokens(results) == hf_greedy_texts(hf, PROMPTS, 12)
    assert all(r.weight_version == version for r in results)


def test_a_failed_update_leaves_no_segment_and_the_next_one_works(on_ray, hf):
    from vroll.roles.ray_engines import EngineFailure
    from vroll.strategy.weights import WeightUpdateError

    model, tok = hf
    state = dict(model.state_dict())
    state["model.layers.0.mlp.not_a_weight"] = state.pop("model.layers.0.mlp.up_proj.weight")
    held = len(on_ray._segments.live())
    for _ in range(2):
        with pytest.raises((WeightUpdateError, EngineFailure), match="not_a_weight"):
            on_ray.update_weights(state)
        no_stray_segments(on_ray)
        assert len(on_ray._segments.live()) <= held + 1  # the failed update's segment went back to the pool
    perturb(model, 12)
    on_ray.update_weights(model.state_dict())
    no_stray_segments(on_ray)
    assert tokens(on_ray.generate(PROMPTS, GREEDY)) == hf_greedy_texts(hf, PROMPTS, 12)


def test_small_buckets_each_travel_in_their_own_segment(on_ray, hf, monkeypatch):
    written = []
    write = on_ray._segments.write
    monkeypatch.setattr(on_ray._segments, "write", lambda *a, **k: written.append(write(*a, **k)) or written[-1])
    model, tok = hf
    perturb(model, 13)
    sc = on_ray.role.strategy_args.strategy_config  # the driver cuts the buckets
    sc["weight_update_bucket_bytes"] = 64 << 10
    try:
        on_ray.update_weights((k, v) for k, v in model.state_dict().items())  # streamed, many buckets
    finally:
        del sc["weight_update_bucket_bytes"]
    assert len({w.segment.name for w in written}) == len(written) >= 3  # one segment per bucket
    no_stray_segments(on_ray)
    assert tokens(on_ray.generate(PROMPTS, GREEDY)) == hf_greedy_texts(hf, PROMPTS, 12)


def test_a_restarted_engine_catches_up_from_the_held_segments(on_ray, hf):
    model, tok = hf
    on_ray.restart(0)
    assert [i["weight_version"] for i in on_ray.info()] == [on_ray.weight_version]
    assert tokens(on_ray.generate(PROMPTS, GREEDY)) == hf_greedy_texts(hf, PROMPTS, 12)
    no_stray_segments(on_ray)


def test_the_in_process_engine_uses_the_same_protocol_and_tells_vllm_the_version(here, hf):
    model, tok = hf
    perturb(model, 14)
    version = here.update_weights(model.state_dict(), verify=True)
    assert here.llm.llm_engine.get_weight_version() == str(version)
    assert tokens(here.generate(PROMPTS, GREEDY)) == hf_greedy_texts(hf, PROMPTS, 12)
    kind = here.llm.collective_rpc(lambda worker: type(worker.weight_transfer_engine).__name__)
    assert kind == ["ShmWeightTransferEngine"]


# -- the transport alone --------------------------------------------------------------------------

def test_transport_choice_names_vllms_transports_on_gpus():
    assert shm_transfer.choose_transport("cpu", engines_on_driver_node=True) == "vroll_shm"
    assert shm_transfer.choose_transport("cpu", engines_on_driver_node=False) == "object_store"
    assert shm_transfer.choose_transport("cuda", engines_on_driver_node=True, colocated=True) == "ipc"
    assert shm_transfer.choose_transport("cuda", engines_on_driver_node=True) == "nccl"
    assert shm_transfer.choose_transport("cuda", engines_on_driver_node=False) == "nccl"


def test_a_segment_round_trips_every_dtype_and_its_checksum():
    bucket = [("a", torch.randn(3, 5)), ("b", torch.randn(7).to(torch.bfloat16)), ("c", torch.randn(2, 2).half()),
              ("empty", torch.empty(0, 4))]
    before, pool = set(shm_transfer.open_segments()), shm_transfer.SegmentPool()
    try:
        written = pool.write(bucket, checksum=True)
        info = written.update_info(pool.live())
        assert all(o % shm_transfer.ALIGN == 0 for o in info["offsets"])
        got = shm_transfer.received_tensors(shm_transfer.ShmUpdateInfo(**info), {})
        assert [n for n, _ in got] == [n for n, _ in bucket]
        assert all(torch.equal(t, u) and t.dtype == u.dtype for (_, t), (_, u) in zip(got, bucket))
        assert shm_transfer.sent_checksum(info).matches(shm_transfer.checksum_of(got))
        described = shm_transfer.described_bucket(info)
        assert [(n, tuple(t.shape), t.dtype, t.is_meta) for n, t in described] == \
            [(n, tuple(t.shape), t.dtype, True) for n, t in bucket]
        assert shm_transfer.named_leftovers() == []  # anonymous: never in /dev/shm
        del got, info  # the receiver's mapping (here, this process) goes with its views
    finally:
        pool.close()
    assert set(shm_transfer.open_segments()) == before


def test_segments_are_reused_and_an_engine_keeps_its_mapping():
    before, pool, mapped = set(shm_transfer.open_segments()), shm_transfer.SegmentPool(), {}
    try:
        first = pool.write([("w", torch.arange(10.0))], checksum=False)
        (_, t), = shm_transfer.received_tensors(shm_transfer.ShmUpdateInfo(**first.update_info(pool.live())), mapped)
        pool.recycle([])  # a complete update: `first` is what a restarted engine would need
        pool.recycle([first])  # the next complete update replaced it
        second = pool.write([("w", torch.arange(10.0) * 2)], checksum=False)
        assert second.segment is first.segment and list(mapped) == [first.segment.name]
        (_, u), = shm_transfer.received_tensors(shm_transfer.ShmUpdateInfo(**second.update_info(pool.live())), mapped)
        assert torch.equal(u, torch.arange(10.0) * 2) and len(mapped) == 1
        bigger = pool.write([("w", torch.zeros(1000))], checksum=False)  # does not fit: a new segment
        assert bigger.segment is not first.segment and len(pool.live()) == 2
        pool.release([bigger])
        pool.recycle([second])  # frees `second`, closes `bigger`'s unneeded segment
        del t, u
        shm_transfer.received_tensors(shm_transfer.ShmUpdateInfo(**second.update_info(pool.live())), mapped)
        assert pool.live() == [first.segment.name]
        assert set(shm_transfer.open_segments()) - before == {first.segment.name}
        mapped.clear()
    finally:
        pool.close()
    assert set(shm_transfer.open_segments()) == before


def test_a_segment_of_a_process_that_is_gone_is_named_in_the_error(tmp_path):
    info = {"names": ["w"], "dtype_names": ["float32"], "shapes": [[1]], "offsets": [0], "segment": "vroll-wt-1-x",
            "pid": 2**22 + 1, "fd": 3, "nbytes": 64, "live": ["vroll-wt-1-x"]}
    with pytest.raises(RuntimeError, match="cannot open segment vroll-wt-1-x of process"):
        shm_transfer.received_tensors(shm_transfer.ShmUpdateInfo(**info), {})


def test_update_info_is_checked_before_anything_is_mapped():
    with pytest.raises(ValueError, match="either a segment or the tensors"):
        shm_transfer.ShmUpdateInfo(names=["a"], dtype_names=["float32"], shapes=[[1]])
    with pytest.raises(ValueError, match="1 names but 2 dtypes"):
        shm_transfer.ShmUpdateInfo(names=["a"], dtype_names=["float32", "float32"], shapes=[[1]], tensors=[])
    with pytest.raises(ValueError, match="the sender's descriptor"):
        shm_transfer.ShmUpdateInfo(names=["a"], dtype_names=["float32"], shapes=[[1]], offsets=[0], segment="s")


def test_closing_the_role_frees_every_segment(on_ray, hf):
    """Last in this module: it closes the engines."""
    assert shm_transfer.open_segments() != []  # the pool kept the last update's segments
    on_ray.close()
    assert shm_transfer.open_segments() == [] and shm_transfer.named_leftovers() == []

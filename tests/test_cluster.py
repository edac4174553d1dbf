"""A role on Ray: two data-parallel engines on this machine's two CPU slots (real engines)."""

import os
import time

import pytest
import torch

from conftest import engine_config, hf_greedy_texts, non_loopback_listeners, write_yaml
from vroll.config import ConfigError, load_config
from vroll.config.schema import GeneratingArgs
from vroll.roles.launcher import launch_role
from vroll.strategy.engine_state import EngineStateError

PROMPTS = ["What is 12+7?", "What is 45-18? The answer is", "hello there", "What is 6*7?", "What is 99+1?"]
GREEDY = GeneratingArgs(max_new_tokens=12, temperature=0.0)
SAMPLED = GeneratingArgs(max_new_tokens=12, temperature=1.0, num_return_sequences=2)


def config(tmp_path, model, mapping, **sc):
    data = engine_config(model, **sc)
    data["actor_infer"]["device_mapping"] = mapping
    return load_config(write_yaml(tmp_path / "c.yaml", data), platform="cpu")


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("cluster"), tiny_model, "list(range(0,2))", engine_call_timeout_s=120)
    c = launch_role(cfg.actor_infer, seed=cfg.seed)
    yield c
    c.close()


@pytest.fixture(scope="module")
def single(tiny_model, tmp_path_factory, cluster):
    cfg = config(tmp_path_factory.mktemp("single"), tiny_model, [0])
    s = launch_role(cfg.actor_infer, seed=cfg.seed)
    yield s
    s.close()


def tokens(results):
    return [[s.token_ids for s in r.samples] for r in results]


def test_two_engines_are_pinned_to_their_own_cores(cluster):
    from vroll.roles.ray_engines import RayEngines

    assert isinstance(cluster, RayEngines) and len(cluster.engines) == 2
    infos = cluster.info()
    assert [i["cores"] for i in infos] == [[0], [1]]
    assert len({i["pid"] for i in infos}) == 2 and os.getpid() not in {i["pid"] for i in infos}


def test_a_local_ray_listens_on_the_loopback_interface_only(cluster):
    """Every process of the Ray vroll started (GCS, raylet, agents, engine actors), and this driver's
    own Ray server, listen on 127.0.0.1 only: a local run exposes nothing to the network."""
    import psutil

    ray_processes = psutil.Process().children(recursive=True)
    assert {p.name() for p in ray_processes} >= {"gcs_server", "raylet"}
    assert len([p for p in ray_processes if "RoleHost" in p.name()]) == 2
    assert non_loopback_listeners([p.pid for p in ray_processes]) == []
    assert all(i["node"] == "127.0.0.1" for i in cluster.info())


def test_results_equal_one_engine_in_input_order(cluster, single):
    for batch in (PROMPTS, PROMPTS[:1], PROMPTS[:3]):
        got = cluster.generate(batch, GREEDY)
        assert [r.index for r in got] == list(range(len(batch)))
        assert tokens(got) == tokens(single.generate(batch, GREEDY))
    # per-prompt seeds follow the prompt, not the engine: sampled results match too
    assert tokens(cluster.generate(PROMPTS, SAMPLED)) == tokens(single.generate(PROMPTS, SAMPLED))


def test_engines_on_ray_serve_the_engine_interface_like_one_engine(cluster, single, hf):
    """The same `GenerationEngine` contract in this process and on Ray, return types included."""
    from vroll.roles.interfaces import GenerationEngine

    _, tok = hf
    assert isinstance(cluster, GenerationEngine) and isinstance(single, GenerationEngine)
    assert type(cluster).__name__ == "RayEngines" and type(single).__name__ == "VllmStrategy"
    seqs = [tok(t)["input_ids"] for t in PROMPTS]
    on_ray, here = cluster.sequence_logprobs(seqs), single.sequence_logprobs(seqs)  # split over two engines
    assert [len(lp) for lp in on_ray] == [len(s) - 1 for s in seqs]
    assert torch.allclose(torch.tensor(sum(on_ray, [])), torch.tensor(sum(here, [])), atol=1e-5)
    for role in (cluster, single):
        reports = role.sleep(1)
        assert isinstance(reports, list) and len(reports) == len(getattr(role, "engines", [role]))
        assert all(r["level"] == 1 for r in reports)
        woken = role.wake_up()
        assert isinstance(woken, list) and all(w["tags"] == ["kv_cache"] for w in woken)
    assert tokens(cluster.generate(PROMPTS, GREEDY)) == tokens(single.generate(PROMPTS, GREEDY))


def hf_greedy(model, tok, texts, n):
    return [[ids] for ids in hf_greedy_texts((model, tok), texts, n)]


def test_weight_update_and_sleep_reach_every_engine(cluster, hf):
    model, tok = hf
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    version = cluster.update_weights(model.state_dict())
    assert [i["weight_version"] for i in cluster.info()] == [version, version]
    expected = hf_greedy(model, tok, PROMPTS, 12)
    results = cluster.generate(PROMPTS, GREEDY)  # five prompts: both engines get some
    assert tokens(results) == expected
    assert all(r.weight_version == version for r in results)
    cluster.sleep(1)
    assert all(i["state"].startswith("asleep") for i in cluster.info())
    with pytest.raises(EngineStateError, match="asleep"):
        cluster.generate(PROMPTS, GREEDY)
    cluster.wake_up()
    assert tokens(cluster.generate(PROMPTS, GREEDY)) == expected


def test_a_dead_engine_is_named_quickly_and_restart_recovers(cluster, hf):
    import ray

    from vroll.roles.ray_engines import EngineFailure

    model, tok = hf
    victim = cluster.engines[1]
    ray.kill(victim.actor, no_restart=True)
    started = time.monotonic()
    with pytest.raises(EngineFailure) as e:
        cluster.generate(PROMPTS, GREEDY)
    assert time.monotonic() - started < 10
    assert f"actor_infer engine rank 1 (node {victim.node_ip}, pid {victim.pid}" in str(e.value)
    assert "died while generating" in str(e.value)
    cluster.restart(1)
    assert [i["weight_version"] for i in cluster.info()] == [cluster.weight_version] * 2
    assert tokens(cluster.generate(PROMPTS, GREEDY)) == hf_greedy(model, tok, PROMPTS, 12)


def test_a_stuck_engine_is_named_at_its_deadline(cluster):
    from vroll.roles.ray_engines import EngineFailure

    slow = GeneratingArgs(max_new_tokens=200, ignore_eos=True, num_return_sequences=16, temperature=1.0)
    cluster.call_timeout_s = 0.5
    try:
        with pytest.raises(EngineFailure, match=r"actor_infer engine rank 0 .* did not answer within 0 s while "
                                                r"generating"):
            cluster.generate(PROMPTS * 4, slow)
    finally:
        cluster.call_timeout_s = 120
    cluster.info()  # the engines finish that work and answer again


def test_invalid_mappings_are_validation_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, "m", [0, 5])
    assert f"actor_infer.device_mapping: devices [5] do not exist: on the CPU backend device ids name CPU slots, " \
           f"and this machine has {os.cpu_count()}" in str(e.value)
    with pytest.raises(ConfigError, match="names devices \\[1\\] more than once"):
        config(tmp_path, "m", [1, 1])
    with pytest.raises(ConfigError, match="2 devices cannot be split into engines of 4"):
        config(tmp_path, "m", [0, 1], tensor_parallel_size=4)


def test_declared_cpu_slots_share_the_cores(tmp_path, monkeypatch, caplog):
    """VROLL_CPU_SLOTS=N declares N CPU slots on fewer cores (to try a multi-rank layout on a small
    machine): slot k runs on core k mod the cores, a file may name the slots, and loading it warns."""
    from vroll.config.layout import local_slots, slot_cores

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("VROLL_CPU_SLOTS", raising=False)
    assert local_slots() == 2 and slot_cores([0, 1]) == [0, 1]
    with pytest.raises(ConfigError, match=r"devices \[2\] do not exist: .* this machine has 2 .*VROLL_CPU_SLOTS=N"):
        config(tmp_path, "m", [2])
    monkeypatch.setenv("VROLL_CPU_SLOTS", "3")
    assert local_slots() == 3
    assert [slot_cores([k]) for k in range(3)] == [[0], [1], [0]] and slot_cores([1, 2]) == [0, 1]
    with caplog.at_level("WARNING"):
        assert config(tmp_path, "m", [2]).actor_infer.device_mapping == [2]
    assert "VROLL_CPU_SLOTS=3 declares 3 CPU slots on a machine with 2 cores: slot k runs on core k mod 2, so " \
           "roles on slots 2 and 0 share a core" in caplog.text
    with pytest.raises(ConfigError, match=r"devices \[3\] do not exist: .* this machine has 3 \(0-2\)"):
        config(tmp_path, "m", [3])
    monkeypatch.setenv("VROLL_CPU_SLOTS", "three")
    with pytest.raises(ConfigError) as e:
        config(tmp_path, "m", [0])
    assert str(e.value).count("VROLL_CPU_SLOTS='three': must be a whole number of CPU slots, 1 or more") == 1


def test_colocated_roles_share_devices_and_take_turns(cluster, tiny_model, tmp_path):
    """A second role on the same two CPU slots: both start, and one sleeps while the other works."""
    from vroll.roles.ray_engines import RayEngines

    cfg = config(tmp_path, tiny_model, [0, 1])
    other = RayEngines(cfg.actor_infer.model_copy(update={"name": "reference"}), seed=cfg.seed)
    try:
        assert [i["cores"] for i in other.info()] == [i["cores"] for i in cluster.info()] == [[0], [1]]
        cluster.sleep(1)
        assert len(other.generate(PROMPTS, GREEDY)) == len(PROMPTS)
        other.sleep(1)
        cluster.wake_up()
        assert len(cluster.generate(PROMPTS, GREEDY)) == len(PROMPTS)
    finally:
        other.close()

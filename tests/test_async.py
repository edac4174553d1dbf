"""The asynchronous pipeline (ROLL's async_generation_ratio): checked files, the look-ahead buffer's
staleness bound, the loop on the real engine (on Ray, its own CPU slot) and trainer, equal to the
synchronous loop when nothing lags, and an engine or a trainer rank killed mid-step named within seconds."""

import json
import os
import time

import pytest

from conftest import engine_config, write_yaml
from test_rlvr import data, read_metrics, rl_config, run  # noqa: F401  (data: a fixture)
from vroll.config import load_config
from vroll.config.rules import check_async
from vroll.config.schema import GeneratingArgs
from vroll.pipeline.async_rollout import RolloutsAhead
from vroll.pipeline.dataset import PromptRecord, PromptSampler
from vroll.strategy.results import PromptResult, Sample

TIMING = ("time/", "memory/", "async/engine_")


def async_config(tmp_path, model, data, **over) -> dict:
    """`rl_config` with the engine on slot 0 and the trainer (and reference) on slot 1."""
    cfg = rl_config(tmp_path, model, data, validation=None, **over)
    cfg["actor_train"]["device_mapping"] = [1]
    cfg["reference"]["device_mapping"] = [1]
    return cfg


def issues_of(tmp_path, cfg):
    return [(i.path, i.message) for i in check_async(load_config(write_yaml(tmp_path / "c.yaml", cfg)))]


def test_async_files_are_checked(tmp_path, tiny_model, data):
    assert issues_of(tmp_path, async_config(tmp_path, tiny_model, data, async_generation_ratio=1)) == []
    colocated = rl_config(tmp_path, tiny_model, data, async_generation_ratio=1)
    (path, message), = issues_of(tmp_path, colocated)
    assert path == "async_generation_ratio" and "devices of their own" in message and "[0]" in message
    assert "actor_infer.device_mapping=[0] actor_train.device_mapping=[1]" in message
    (path, message), = issues_of(tmp_path, async_config(tmp_path, tiny_model, data, async_generation_ratio=1.5))
    assert "whole number" in message
    dapo = async_config(tmp_path, tiny_model, data, async_generation_ratio=1)
    dapo["rewards"]["math"]["query_filter_config"] = {"type": "mean_filter"}
    assert "dynamic sampling" in issues_of(tmp_path, dapo)[0][1]


class ListEngine:
    """A stand-in for the engine's submit/collect (the buffer's logic is under test, not vLLM's):
    every submitted group finishes at once, produced by the weight version `version` says."""

    def __init__(self):
        self.version, self.submitted, self.done, self.dropped = 0, [], [], []

    def submit(self, keys, prompts, g, call, seed_indices=None):
        self.submitted.append((list(keys), call, list(seed_indices)))
        self.done += [PromptResult(k, list(p), samples=[Sample([1, 2], "x", "stop", [0.0, 0.0],
                                                               [self.version, self.version])],
                                   weight_version=self.version) for k, p in zip(keys, prompts)]

    def collect(self, min_groups=1, wait_s=0.0):
        out, self.done = self.done, []
        return out

    def drop(self, keys):
        self.dropped += list(keys)
        return len(keys)

    def stream_report(self):
        return {"idle_s": 0.0}


def records(n):
    return [PromptRecord(index=i, prompt_ids=[i, i], prompt_text=str(i), ground_truth="0", tag="t", extra={})
            for i in range(n)]


def test_without_lag_each_step_is_handed_over_once():
    engine = ListEngine()
    ahead = RolloutsAhead(engine, PromptSampler(records(10), 0), ratio=0, batch_size=2, generating_args=None,
                          max_steps=3, timeout_s=5)
    got = [ahead.take(step, version=0)[0] for step in (1, 2, 3)]
    assert [call for _, call, _ in engine.submitted] == [1, 2, 3]
    sampler = PromptSampler(records(10), 0)
    assert [[r.index for r in recs] for recs in got] == [[r.index for r in sampler.next_batch(2)] for _ in range(3)]


def test_rollouts_ahead_keeps_the_engine_ratio_steps_ahead_and_drops_stale_groups():
    engine = ListEngine()
    ahead = RolloutsAhead(engine, PromptSampler(records(10), 0), ratio=1, batch_size=2, generating_args=None,
                          max_steps=4, timeout_s=5)
    ahead.fill(1)  # steps 1 and 2 handed over, seeded as the synchronous loop seeds them
    assert [(call, seeds) for _, call, seeds in engine.submitted] == [(1, [0, 1]), (2, [0, 1])]
    recs, results, metrics = ahead.take(1, version=0)
    assert [r.index for r in results] == [0, 1] and metrics["async/staleness_max"] == 0
    engine.version = 1
    ahead.fill(2)  # step 3 now
    recs2, results2, metrics = ahead.take(2, version=1)  # made by version 0: one behind, within the bound
    assert metrics["async/staleness_mean"] == 1 and metrics["async/dropped_groups"] == 0
    ahead.fill(3)  # step 4 (the last)
    engine.version = 3
    _, results3, metrics = ahead.take(3, version=3)  # step 3's groups came from version 1: two behind
    assert metrics["async/dropped_groups"] == 2  # dropped and replaced by fresh prompts from version 3
    assert all(s.token_versions == [3, 3] for r in results3 for s in r.samples)
    ahead.fill(4)
    assert 5 not in ahead.submitted and len(engine.submitted) == 5  # never beyond max_steps (+1 replacement)
    ahead.close()
    assert len(engine.dropped) == 2  # step 4's groups, handed over and never taken


def test_async_loop_on_its_own_slots_lags_one_version_and_resumes(tmp_path, tiny_model, data):
    cfg = async_config(tmp_path, tiny_model, data, async_generation_ratio=1, max_steps=3, save_steps=2)
    summary = run(tmp_path, cfg)
    steps = read_metrics(summary["metrics"])
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert steps[0]["async/staleness_max"] == 0  # the first rollout: the weights the trainer has
    for s in steps[1:]:  # generated while the trainer trained the step before: one version behind
        assert s["async/staleness_mean"] <= 1 and s["async/staleness_max"] == 1
        assert s["rollout_weight_version"] == s["step"] - 2
    assert all(s["async/dropped_groups"] == 0 and s["weight_version"] == s["step"] for s in steps)
    assert all("time/wait_rollout" in s and "async/engine_idle_s" in s for s in steps)
    resumed = {**cfg, "max_steps": 4, "resume_from_checkpoint": True}
    run(tmp_path, resumed, "r.yaml")
    again = read_metrics(summary["metrics"])
    assert [s["step"] for s in again] == [1, 2, 3, 4]
    assert again[-1]["weight_version"] == 4


def test_async_machinery_without_lag_equals_the_synchronous_loop(tmp_path, tiny_model, data, monkeypatch):
    """The look-ahead path at ratio 0 (the same prompts, seeds and weights as the synchronous loop)
    gives the synchronous loop's metrics exactly: the streamed engine samples what `generate` does."""
    from vroll.pipeline import rlvr

    # the asynchronous loop recomputes the old log-probs (its samples may lag); so does this one
    sync = async_config(tmp_path / "s", tiny_model, data, max_steps=2, enable_old_logprobs_recompute=True)
    run(tmp_path, sync, "s.yaml")
    lagless = async_config(tmp_path / "a", tiny_model, data, max_steps=2, async_generation_ratio=1)
    monkeypatch.setattr(rlvr, "rollouts_ahead", lambda cfg, roles, sampler: RolloutsAhead(
        roles.infer, sampler, 0, cfg.rollout_batch_size, rlvr.rollout_args(cfg), cfg.max_steps, 60))
    run(tmp_path, lagless, "a.yaml")
    a = read_metrics(tmp_path / "s" / "run" / "metrics.jsonl")
    b = read_metrics(tmp_path / "a" / "run" / "metrics.jsonl")
    strip = [{k: v for k, v in r.items() if not k.startswith(TIMING) and not k.startswith("async/")} for r in a + b]
    assert strip[0]["reward/std"] > 0
    assert strip[:2] == strip[2:]


def test_an_engine_killed_mid_rollout_is_named_within_seconds(tiny_model, tmp_path):
    import psutil

    from conftest import assert_gone_within
    from vroll.roles.ray_engines import EngineFailure, RayEngines

    data = engine_config(tiny_model, engine_call_timeout_s=120)
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data), platform="cpu")
    engines = RayEngines(cfg.actor_infer, platform="cpu")
    try:
        (victim,) = engines.engines
        g = GeneratingArgs(max_new_tokens=200, ignore_eos=True, num_return_sequences=4)
        engines.submit(list(range(8)), [[5, 6, 7]] * 8, g, call=0)
        process = psutil.Process(victim.pid)
        os.kill(victim.pid, 9)
        killed = time.monotonic()
        with pytest.raises(EngineFailure) as e:
            while True:
                engines.collect(min_groups=8, wait_s=1.0)
        assert time.monotonic() - killed < 5
        assert f"engine rank 0 (node {victim.node_ip}, pid {victim.pid}" in str(e.value)
        assert_gone_within([process], 5)
    finally:
        engines.close()


@pytest.mark.parametrize("victim", ["trainer rank", "engine"])
def test_a_role_killed_mid_step_is_named_within_seconds_and_nothing_is_left(tmp_path, tiny_model, data, victim):
    """`kill -9` of one of two trainer ranks, or of the engine, while the trainer works on step 2 and the
    engine generates step 3: `vroll train` names the process (role, rank, pid) within 5 s, stops with
    exit status 1, and leaves no process of its Ray behind (raylet, workers, the engine, the ranks, the
    reaper). The engine on slot 0 and the ranks on slots 1 and 2 need 3 CPU slots: VROLL_CPU_SLOTS
    declares them on a smaller machine."""
    import re
    import signal
    import subprocess
    import sys
    import threading

    import psutil

    from conftest import REPO, assert_gone_within
    from vroll.config.layout import slot_cores

    cfg = async_config(tmp_path, tiny_model, data, async_generation_ratio=1, max_steps=100, save_steps=1000,
                       use_kl_loss=False)  # no reference, and the rule reward only: nothing computes in vroll's
    del cfg["rewards"]["rm"]  # process between the calls to its Ray roles, in which no death can be seen
    cfg["actor_train"]["device_mapping"] = [1, 2]
    cfg["actor_train"]["strategy_args"]["strategy_config"] = {"cpu_threads_per_rank": 1}
    cfg["actor_train"]["training_args"]["per_device_train_batch_size"] = 4  # 16 rows: 4 x 2 x 2 ranks
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VROLL_CPU_SLOTS="3")
    proc = subprocess.Popen([sys.executable, "-m", "vroll.cli.main", "train", write_yaml(tmp_path / "c.yaml", cfg)],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    lines: list[tuple[float, str]] = []  # (when read, line)
    step_1 = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append((time.monotonic(), line))
            if re.search(r"\bstep 1: ", line):
                step_1.set()

    def text():
        return "".join(line for _, line in lines)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        start = time.monotonic()
        while not step_1.wait(0.5):  # a run that fails or hangs before step 1 ends the test at once
            assert proc.poll() is None and time.monotonic() - start < 300, text()[-3000:]
        ranks = {int(r): int(pid) for r, pid in re.findall(r"actor_train rank (\d) \(node [^,]+, pid (\d+), ", text())}
        session = psutil.Process(proc.pid).children(recursive=True)
        hosts = [p for p in session if "RoleHost" in p.name()]
        assert set(ranks) == {0, 1} and len(hosts) == 3, text()[-3000:]  # the engine and two ranks
        engine = next(p for p in hosts if p.pid not in ranks.values())
        assert [engine.cpu_affinity(), psutil.Process(ranks[0]).cpu_affinity(),
                psutil.Process(ranks[1]).cpu_affinity()] == [slot_cores([0]), slot_cores([1]), slot_cores([2])]
        assert {"raylet", "gcs_server"} <= {p.name() for p in session}
        assert [p for p in session if "reaper.py" in " ".join(p.cmdline())]
        if victim == "engine":
            target, named = engine, rf"actor_infer engine rank 0 \(node [^,]+, pid {engine.pid}, devices \[0\]\) "
        else:
            target = psutil.Process(ranks[1])
            named = rf"actor_train rank 1 \(node [^,]+, pid {ranks[1]}, devices \[2\]\) "
        # mid-step: step 3's prompts are with the engine, and the victim works (its CPU time grows)
        busy, deadline = target.cpu_times().user, time.monotonic() + 60
        while target.cpu_times().user < busy + 0.05 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(target.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert proc.wait(timeout=60) == 1
        reader.join(10)
        first = next((t for t, line in lines if re.search(named + "died (while|before) ", line)), None)
        assert first is not None, text()[-3000:]
        assert first - killed < 5, f"named {first - killed:.1f} s after the kill"
        assert re.match("error: " + named + "died (while|before) ", lines[-1][1]), text()[-3000:]
        assert "Traceback" not in text()
        assert "while dropping stale groups" not in text()  # the call that met the death, not the close's
        assert_gone_within(session, 5)
    finally:
        proc.kill()
        proc.wait()
        reader.join(10)

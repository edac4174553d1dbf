"""A member of a role on Ray that dies is named within 5 s, however its process died."""

import os
import threading
import time

import pytest

from conftest import REPO, engine_config, write_yaml
from vroll.config import load_config
from vroll.config.schema import GeneratingArgs


@pytest.fixture
def forking_engines(tiny_model, tmp_path, monkeypatch):
    """Two engines on a Ray of their own whose backend is `tests/forking_engine.py` (the workers
    import it: the Ray started here hands them this PYTHONPATH)."""
    import ray

    from vroll.roles.ray_engines import RayEngines

    assert not ray.is_initialized(), "this test starts a Ray of its own"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.join(REPO, "tests"), REPO,
                                                      os.environ.get("PYTHONPATH", "")]))
    data = engine_config(tiny_model, engine_call_timeout_s=120)
    data["actor_infer"]["device_mapping"] = "list(range(0,2))"
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data), platform="cpu")
    engines = RayEngines(cfg.actor_infer, platform="cpu", backend="forking_engine:ForkingEngine")
    yield engines
    engines.close()


def test_a_killed_engine_process_is_named_within_5_s(forking_engines):
    """`kill -9` of an engine's process during a call: `EngineFailure` naming that engine within 5 s,
    even when the engine forked a process that keeps the actor's connections open (Ray itself then
    reports the death only when that process ends: 60 s here)."""
    import psutil

    from vroll.roles.ray_engines import EngineFailure

    victim = forking_engines.engines[1]
    assert psutil.Process(victim.pid).children()  # the forked process holding the actor's sockets
    killed_at = []

    def kill():
        os.kill(victim.pid, 9)
        killed_at.append(time.monotonic())

    threading.Timer(1.0, kill).start()
    with pytest.raises(EngineFailure) as e:
        forking_engines.generate(["What is 1+1?", "hello"], GeneratingArgs(max_new_tokens=4))
    named_after = time.monotonic() - killed_at[0]
    assert f"actor_infer engine rank 1 (node {victim.node_ip}, pid {victim.pid}" in str(e.value)
    assert "died while generating" in str(e.value)
    assert named_after < 5, f"named after {named_after:.1f} s"


# -- the rules of ActorGroup.call, on a stand-in for Ray (no cluster): members are real processes --------
class QuietRay:
    """`ray.wait` / `ray.get` for `ActorGroup.call`: the refs in `done` finish at once with their value
    (or exception); the others never finish."""

    def __init__(self, done: dict):
        self.done = done

    def wait(self, pending, num_returns, timeout):
        ready = [r for r in pending if r in self.done][:num_returns]
        if not ready:
            time.sleep(timeout)
        return ready, [r for r in pending if r not in ready]

    def get(self, ref):
        if isinstance(self.done[ref], BaseException):
            raise self.done[ref]
        return self.done[ref]


def group_of(name, processes, *, collective=False, done=None):
    """An `ActorGroup` named `name` whose members are these psutil processes (one device each), its Ray a
    `QuietRay`: what `call` decides is under test, not Ray."""
    from vroll.cluster.actors import ActorGroup, Member, RoleFailure
    from vroll.cluster.placement import Placement

    g = object.__new__(ActorGroup)
    g.name, g.label, g.failure, g.call_timeout_s, g.collective = name, "rank", RoleFailure, 30.0, collective
    g.broken, g.watched_with, g._ray, g._owns_ray = False, (), QuietRay(done or {}), False
    g.members = [Member(Placement(i, (i,), 0, (i,)), None, "127.0.0.1", p.pid, "", p.create_time())
                 for i, p in enumerate(processes)]
    return g


@pytest.fixture
def sleepers():
    """Processes that stand for members (killed by the test, or at its end)."""
    import subprocess

    import psutil

    procs = []

    def start():
        procs.append(subprocess.Popen(["sleep", "60"]))
        return psutil.Process(procs[-1].pid)

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_collective_members_error_after_its_peers_death_names_the_dead_peer(sleepers):
    """Rank 0 fails in a collective because rank 1 died (gloo's "Connection closed by peer"), and Ray
    hands over rank 0's error first: the dead rank is named, not its peer's error (a collective group
    only; any other group raises a member's own error as itself)."""
    from ray.exceptions import RayTaskError

    from vroll.cluster.actors import RoleFailure

    peer_error = RayTaskError("call", "", RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    alive, dead = sleepers(), sleepers()
    dead.kill()
    dead.wait()
    trainer = group_of("actor_train", [alive, dead], collective=True, done={0: peer_error})
    with pytest.raises(RoleFailure) as e:
        trainer.call(trainer.members, "train_step", lambda m: m.placement.rank)
    assert str(e.value) == (f"actor_train rank 1 (node 127.0.0.1, pid {dead.pid}, devices [1]) died while train_step: "
                            f"its process {dead.pid} has ended (rank 0 then failed: [gloo/transport/tcp/pair.cc:534] "
                            "Connection closed by peer)")
    assert trainer.broken
    engines = group_of("actor_infer", [alive, dead], done={0: peer_error})
    with pytest.raises(RuntimeError) as e:  # the member's own error, as Ray hands it over
        engines.call(engines.members, "generating", lambda m: m.placement.rank)
    assert not isinstance(e.value, RoleFailure) and e.value.cause is peer_error.cause


def test_groups_watched_together_name_each_others_dead_member(sleepers):
    """The roles of one run are watched together: a call to the trainer names an engine that died
    before it started, or while it waits (the trainer's ranks are then still in that call, so the
    trainer group is broken too: closing kills them)."""
    from vroll.cluster.actors import RoleFailure, watch_together

    trainer = group_of("actor_train", [sleepers(), sleepers()], collective=True)
    engine_process = sleepers()
    engines = group_of("actor_infer", [engine_process])
    watch_together([trainer, engines])
    assert trainer.watched_with == (engines,) and engines.watched_with == (trainer,)
    threading.Timer(0.3, engine_process.kill).start()
    start = time.monotonic()
    with pytest.raises(RoleFailure) as e:
        trainer.call(trainer.members, "train_step", lambda m: m.placement.rank)
    assert time.monotonic() - start < 2
    assert str(e.value) == (f"actor_infer rank 0 (node 127.0.0.1, pid {engine_process.pid}, devices [0]) died while "
                            f"the run waited for actor_train (train_step): its process {engine_process.pid} has ended")
    assert engines.broken and trainer.broken

    engines.broken = trainer.broken = False  # a call that would start after the death: named before it starts
    with pytest.raises(RoleFailure, match=r"actor_infer rank 0 .* died before the run's call to actor_train "
                                          r"\(batch_logprobs\)"):
        trainer.call(trainer.members, "batch_logprobs", lambda m: 1 / 0)  # nothing is submitted
    assert not trainer.broken

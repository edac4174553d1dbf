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

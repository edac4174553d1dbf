"""A run owns its output_dir: a second run is refused naming the first (pid, host), the lock goes
however the run ends, a dead run's lock is taken over with a warning, and an output_dir that is a file
or cannot be made is a clear error before anything starts."""

import json
import logging
import os
import socket
import subprocess
import sys
from contextlib import nullcontext

import pytest

from conftest import REPO, write_yaml
from vroll.config.errors import ConfigError
from vroll.pipeline.output_dir import LOCK, OutputDirBusy, own_output_dir


def train_cli(tmp_path, tiny_model, **over):
    from test_rlvr import rl_config
    from vroll.data.arithmetic import write_dataset

    data = write_dataset(tmp_path / "data", n_train=8, n_eval=4, seed=1, max_operand=9)
    cfg = rl_config(tmp_path, tiny_model, data, **over)
    return subprocess.run([sys.executable, "-m", "vroll.cli.main", "train", write_yaml(tmp_path / "c.yaml", cfg)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def hold(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))


def test_a_second_run_is_refused_naming_the_first(tmp_path, tiny_model):
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        hold(tmp_path / "run", first.pid)
        with pytest.raises(OutputDirBusy, match=f"pid {first.pid} on host {socket.gethostname()}"):
            with own_output_dir(tmp_path / "run"):
                pass
        assert json.loads((tmp_path / "run" / LOCK).read_text())["pid"] == first.pid  # still the first's

        r = train_cli(tmp_path, tiny_model)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"is in use by another vroll run (pid {first.pid} on host {socket.gethostname()}" in r.stderr
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
    finally:
        first.kill()
        first.wait()


def test_a_busy_output_dir_is_refused_before_the_slow_checks(tmp_path, tiny_model, monkeypatch):
    """`vroll train` / `vroll sft` look at the lock before the checks that import vLLM."""
    import argparse

    import vroll.strategy.vllm_compat as compat
    from test_rlvr import rl_config
    from vroll.cli.main import load_job_config
    from vroll.data.arithmetic import write_dataset

    def slow_check():
        raise AssertionError("the platform was asked before the lock was looked at")

    monkeypatch.setattr(compat, "current_platform_name", slow_check)
    cfg = rl_config(tmp_path, tiny_model, write_dataset(tmp_path / "data", n_train=8, n_eval=4, seed=1, max_operand=9))
    hold(tmp_path / "run", os.getpid())
    args = argparse.Namespace(config=write_yaml(tmp_path / "c.yaml", cfg), overrides=[f"output_dir={tmp_path / 'run'}"])
    for job in ("train", "sft"):
        with pytest.raises(OutputDirBusy, match=f"pid {os.getpid()} on host"):
            load_job_config(args, job)


@pytest.mark.parametrize("ending", [None, ValueError, KeyboardInterrupt])
def test_the_lock_is_released_however_the_run_ends(tmp_path, ending):
    lock = tmp_path / "run" / LOCK
    with pytest.raises(ending) if ending else nullcontext():
        with own_output_dir(tmp_path / "run"):
            holder = json.loads(lock.read_text())
            assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
            (tmp_path / "run" / "metrics.jsonl").write_text("")
            if ending:
                raise ending()
    assert not lock.exists() and (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_dead_runs_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    hold(tmp_path / "run", gone.pid)
    with caplog.at_level(logging.WARNING), own_output_dir(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / LOCK).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {gone.pid}" in caplog.text and "no longer running" in caplog.text


def test_an_output_dir_that_is_a_file_or_cannot_be_made(tmp_path, tiny_model):
    (tmp_path / "file").write_text("")
    for bad, why in ((tmp_path / "file", "is a file, not a folder"),
                     (tmp_path / "file" / "run", f"cannot be created: '{tmp_path / 'file'}' is a file")):
        with pytest.raises(ConfigError, match="output_dir: .* (is a file|cannot be created)"):
            with own_output_dir(bad):
                pass
        r = train_cli(tmp_path, tiny_model, output_dir=str(bad))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"output_dir: '{bad}' {why}" in r.stderr

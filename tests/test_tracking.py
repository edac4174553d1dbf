"""`track_with` / `tracker_kwargs` (config/trackers.py, pipeline/tracking.py): metrics.jsonl always,
and TensorBoard, wandb (offline only) or standard output besides. No engine is started here; the
tracker packages are stood in for where they are not installed, recording what vroll asks of them."""

import json
import sys
import types

import pytest

from conftest import write_yaml
from vroll.config import ConfigError, load_config
from vroll.config import trackers
from vroll.config.rules import check_train_config
from vroll.pipeline.tracking import MetricsLog, open_tracker


def config(tmp_path, **top):
    data = {"seed": 1, "pretrain": "m", "exp_name": "exp", "output_dir": str(tmp_path / "out"), **top,
            "actor_train": {"data_args": {"file_name": "x.jsonl"}, "strategy_args": {"strategy_name": "fsdp2_train"}}}
    return write_yaml(tmp_path / "c.yaml", data)


def problems(tmp_path, **top) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(config(tmp_path, **top))
    return [str(i) for i in e.value.issues]


def test_tracker_names_and_options_are_checked(tmp_path):
    assert problems(tmp_path, track_with="tensorbord") == [
        "track_with: 'tensorbord': not a tracker (did you mean 'tensorboard'?); allowed: tensorboard, wandb, stdout, "
        "or null for metrics.jsonl only"]
    assert problems(tmp_path, track_with="swanlab")[0].startswith(
        "track_with: 'swanlab': ROLL's tracker is not in vroll (it logs online); allowed: tensorboard, wandb, stdout")
    assert problems(tmp_path, track_with="stdout", tracker_kwargs={"log_dir": "x"}) == [
        "tracker_kwargs.log_dir: 'x': not an option of track_with 'stdout' (it takes: none)"]
    assert problems(tmp_path, track_with="wandb", tracker_kwargs={"project": "p", "entity": "me"}) == [
        "tracker_kwargs.entity: 'me': not an option of track_with 'wandb' (it takes: project, name, tags, notes, "
        "group, log_dir, mode, api_key)"]
    assert problems(tmp_path, track_with="wandb", tracker_kwargs={"mode": "online"}) == [
        "tracker_kwargs.mode: 'online': vroll runs wandb offline only (never online); allowed: offline, disabled; "
        "upload later with `wandb sync`"]
    for name in ("tensorboard", "wandb", "stdout", None, ""):
        load_config(config(tmp_path, track_with=name))


def test_a_named_tracker_must_be_installed_before_start(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers, "installed", lambda name: False)
    found = [str(i) for i in check_train_config(load_config(config(tmp_path, track_with="wandb")), "sft")]
    assert "track_with: 'wandb' needs the wandb package, which is not installed: pip install wandb (into vroll's " \
           "environment), or set track_with: null for metrics.jsonl only" in found
    found = [str(i) for i in check_train_config(load_config(config(tmp_path, track_with="tensorboard")), "sft")]
    assert any(i.startswith("track_with: 'tensorboard' needs the tensorboard package") for i in found)
    # ROLL's default, left unset: skipped when not installed
    cfg = load_config(config(tmp_path))
    assert cfg.track_with == "tensorboard" and not [i for i in check_train_config(cfg, "sft") if i.path == "track_with"]
    assert open_tracker(cfg, tmp_path / "out") is None
    found = [str(i) for i in check_train_config(load_config(config(
        tmp_path, track_with="stdout", tracker_kwargs={}, output_dir=str(tmp_path / "out"))), "sft")]
    assert not [i for i in found if i.startswith("track")]


def test_log_dir_that_cannot_be_made_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers, "installed", lambda name: True)
    (tmp_path / "file").write_text("")
    cfg = load_config(config(tmp_path, track_with="tensorboard", tracker_kwargs={"log_dir": str(tmp_path / "file")}))
    assert f"tracker_kwargs.log_dir: {str(tmp_path / 'file')!r} is a file, not a folder; choose a folder this user " \
           "can write to" in [str(i) for i in check_train_config(cfg, "sft")]


def test_stdout_prints_one_metrics_line_per_step(tmp_path, capsys):
    cfg = load_config(config(tmp_path, track_with="stdout"))
    log = MetricsLog(tmp_path / "out", tracker=open_tracker(cfg, tmp_path / "out"))
    log.write({"step": 1, "reward/mean": 0.5, "data/epoch": 0, "note": "text"})
    log.write({"step": 2, "reward/mean": 0.75})
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ['metrics_tag: {"step": 1, "metrics": {"reward/mean": 0.5, "data/epoch": 0}}',
                     'metrics_tag: {"step": 2, "metrics": {"reward/mean": 0.75}}']
    assert [r["step"] for r in log.read()] == [1, 2]  # metrics.jsonl is written as always


class FakeWriter:
    made: list = []

    def __init__(self, log_dir, **kwargs):
        self.log_dir, self.kwargs, self.scalars, self.closed = log_dir, kwargs, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, k, v, step):
        self.scalars.append((k, v, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    monkeypatch.setattr(trackers, "installed", lambda name: True)
    FakeWriter.made = []
    return FakeWriter


def test_tensorboard_writes_each_number_where_roll_would(tmp_path, fake_tensorboard):
    cfg = load_config(config(tmp_path))
    log = MetricsLog(tmp_path / "out", tracker=open_tracker(cfg, tmp_path / "out"))
    log.write({"step": 3, "reward/mean": 0.5, "ok": True})
    log.close()
    (w,) = fake_tensorboard.made
    assert w.log_dir == str(tmp_path / "out" / "tensorboard") and w.scalars == [("reward/mean", 0.5, 3)] and w.closed
    # ROLL's log_dir: log_dir/exp_name/<start time>; the other kwargs go to SummaryWriter; a resume purges
    cfg = load_config(config(tmp_path, track_with="tensorboard",
                             tracker_kwargs={"log_dir": str(tmp_path / "tb"), "flush_secs": 5}))
    open_tracker(cfg, tmp_path / "out", resume_step=7, started="20260101-000000")
    w = fake_tensorboard.made[-1]
    assert w.log_dir == str(tmp_path / "tb" / "exp" / "20260101-000000")
    assert w.kwargs == {"flush_secs": 5, "purge_step": 8}


def test_wandb_runs_offline_with_rolls_options(tmp_path, monkeypatch):
    calls = {}

    class Run:
        def log(self, values, step):
            calls.setdefault("log", []).append((values, step))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"], calls["mode_env"] = kwargs, __import__("os").environ.get("WANDB_MODE")
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = load_config(config(tmp_path, track_with="wandb", tracker_kwargs={
        "project": "p", "name": "n", "tags": ["a"], "api_key": "secret", "log_dir": str(tmp_path / "wb")}))
    log = MetricsLog(tmp_path / "out", tracker=open_tracker(cfg, tmp_path / "out"))
    log.write({"step": 1, "reward/mean": 0.25})
    log.close()
    init_args = {k: v for k, v in calls["init"].items() if k != "config"}
    assert init_args == {"project": "p", "name": "n", "tags": ["a"], "dir": str(tmp_path / "wb"), "mode": "offline"}
    assert calls["mode_env"] == "offline" and calls["log"] == [({"reward/mean": 0.25}, 1)] and calls["finished"]
    assert "secret" not in json.dumps(calls["init"]["config"]) and calls["init"]["config"]["exp_name"] == "exp"
    # without log_dir, wandb's files go under output_dir
    cfg = load_config(config(tmp_path, track_with="wandb"))
    open_tracker(cfg, tmp_path / "out")
    assert calls["init"]["dir"] == str(tmp_path / "out") and calls["init"]["mode"] == "offline"


def test_tensorboard_events_read_back_and_a_resume_purges_the_steps_after_it(tmp_path):
    """The real SummaryWriter (skipped where tensorboard is not installed)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(config(tmp_path, track_with="tensorboard", tracker_kwargs={"flush_secs": 5}))
    log = MetricsLog(tmp_path / "out", tracker=open_tracker(cfg, tmp_path / "out"))
    for step in (1, 2, 3):
        log.write({"step": step, "reward/mean": step / 10})
    log.close()
    log = MetricsLog(tmp_path / "out", 1, tracker=open_tracker(cfg, tmp_path / "out", 1))
    for step in (2, 3):
        log.write({"step": step, "reward/mean": float(step)})
    log.close()
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("reward/mean")] == [(1, 0.1), (2, 2.0), (3, 3.0)]

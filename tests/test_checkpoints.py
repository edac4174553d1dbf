"""Checkpoints hold nothing that runs: the trainer state is safetensors + JSON, an earlier vroll's
`trainer_state.pt` is read without unpickling code, a hostile one is refused with its file named, a
broken latest checkpoint or one of another model is skipped for the newest one that loads and fits, and
interrupted saves leave nothing."""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, write_yaml
from vroll.config.errors import CheckpointError
from vroll.pipeline.checkpoint import find_checkpoint, partial_saves_discarded, save_checkpoint
from vroll.strategy.train_state import check_train_state, load_train_state, save_train_state


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def fake_state():
    return {"optimizer": {"state": {"w": {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
                          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": ["w"], "foreach": None}]},
            "scheduler": {"last_epoch": 3, "_last_lr": [1e-3]}, "torch_rng": torch.get_rng_state()}


def fitting_state(model):
    """`fake_state` with its optimiser state on a parameter the model has (model.norm.weight), shaped as there."""
    from safetensors import safe_open

    with safe_open(os.path.join(model, "model.safetensors"), "pt") as f:
        shape = f.get_slice("model.norm.weight").get_shape()
    state = fake_state()
    state["optimizer"] = {"state": {"model.norm.weight": {"step": torch.tensor(3.0), "exp_avg": torch.zeros(shape),
                                                          "exp_avg_sq": torch.zeros(shape)}},
                          "param_groups": [{"lr": 1e-3, "params": ["model.norm.weight"]}]}
    return state


def make_checkpoint(root, step, model, critic=None):
    """A checkpoint folder as vroll writes it (the model's files, a small trainer state, vroll_state.json),
    with a critic's folder (a value model on `critic`'s config) when given."""
    path = root / "checkpoints" / f"step_{step}"
    shutil.copytree(model, path)
    save_train_state(path, fitting_state(model))
    if critic is not None:
        from vroll.models.values import load_value_model

        load_value_model(critic, torch.float32).save_pretrained(path / "critic")
        save_train_state(path / "critic", fitting_state(critic))
    (path / "vroll_state.json").write_text(json.dumps({"step": step, "data": {"epoch": 0, "position": 4 * step},
                                                       "weight_version": step}))
    return path


def test_trainer_state_is_safetensors_and_json_and_round_trips(tmp_path):
    save_train_state(tmp_path, fake_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.json", "trainer_state.tensors"]
    got = load_train_state(tmp_path)
    want = fake_state()
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]  # the tuple stays a tuple
    assert torch.equal(got["optimizer"]["state"]["w"]["exp_avg"], want["optimizer"]["state"]["w"]["exp_avg"])
    assert got["optimizer"]["state"]["w"]["step"].shape == () and torch.equal(got["torch_rng"], want["torch_rng"])
    assert got["scheduler"] == want["scheduler"]


def test_an_earlier_vrolls_trainer_state_safetensors_still_loads(tmp_path):
    """Before the rename (vLLM took `trainer_state.safetensors` for weights) the tensors had that name."""
    save_train_state(tmp_path, fake_state())
    (tmp_path / "trainer_state.tensors").rename(tmp_path / "trainer_state.safetensors")
    check_train_state(tmp_path)
    assert torch.equal(load_train_state(tmp_path)["torch_rng"], fake_state()["torch_rng"])


def test_an_earlier_vrolls_trainer_state_pt_still_loads(tmp_path):
    torch.save(fake_state(), tmp_path / "trainer_state.pt")
    check_train_state(tmp_path)
    assert load_train_state(tmp_path)["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_a_hostile_trainer_state_runs_nothing_and_names_its_file(tmp_path, tiny_model):
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(marker), "scheduler": {}, "torch_rng": torch.get_rng_state()},
               tmp_path / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="trainer_state.pt: refused: .*posix.system"):
        load_train_state(tmp_path)
    assert not marker.exists()

    # the whole command, with the folder as resume_from_checkpoint: refused before anything starts
    from test_rlvr import rl_config
    from vroll.data.arithmetic import write_dataset

    ckpt = make_checkpoint(tmp_path / "downloaded", 3, tiny_model)
    for name in ("trainer_state.json", "trainer_state.tensors"):
        (ckpt / name).unlink()
    shutil.copy(tmp_path / "trainer_state.pt", ckpt)
    data = write_dataset(tmp_path / "data", n_train=8, n_eval=4, seed=1, max_operand=9)
    cfg = rl_config(tmp_path, tiny_model, data, resume_from_checkpoint=str(ckpt))
    r = subprocess.run([sys.executable, "-m", "vroll.cli.main", "train", write_yaml(tmp_path / "c.yaml", cfg)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert not marker.exists()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{ckpt / 'trainer_state.pt'}: refused" in r.stderr and "could run code" in r.stderr


def test_malformed_state_files_are_named(tmp_path):
    save_train_state(tmp_path, fake_state())
    data = (tmp_path / "trainer_state.tensors").read_bytes()
    (tmp_path / "trainer_state.tensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="trainer_state.tensors: cannot be read"):
        check_train_state(tmp_path)
    (tmp_path / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="trainer_state.json: not readable JSON"):
        check_train_state(tmp_path)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"format": "vroll-trainer-state/1", "state": {
        "optimizer": {"__tensor__": "/nowhere"}, "scheduler": {}, "torch_rng": None}}))
    (tmp_path / "other").mkdir()
    save_train_state(tmp_path / "other", {"x": torch.ones(1)})  # a valid tensors file of another state
    shutil.copy(tmp_path / "other" / "trainer_state.tensors", tmp_path)
    with pytest.raises(CheckpointError, match="trainer_state.tensors: has no tensor '/nowhere'"):
        load_train_state(tmp_path)


def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path, tiny_model, caplog):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step, tiny_model)
    weights = tmp_path / "checkpoints" / "step_3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a save cut short by a full disk
    (tmp_path / "checkpoints" / "step_2" / "vroll_state.json").write_text('{"step": 2')
    with caplog.at_level(logging.WARNING):
        path, state = find_checkpoint(True, tmp_path)
    assert path.name == "step_1" and state["step"] == 1
    assert f"skipping checkpoint step_3: {weights}: cannot be read, truncated or corrupt" in caplog.text
    assert "skipping checkpoint step_2: " in caplog.text and "vroll_state.json: not readable JSON" in caplog.text

    (tmp_path / "checkpoints" / "step_1" / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint in .* loads .*step_1: .*no trainer state"):
        find_checkpoint(True, tmp_path)
    with pytest.raises(CheckpointError, match="step_3/model.safetensors: cannot be read"):  # named: no fallback
        find_checkpoint(str(tmp_path / "checkpoints" / "step_3"), tmp_path)
    other = make_checkpoint(tmp_path / "other", 1, tiny_model)
    torch.save({}, other / "pytorch_model.bin")  # transformers could pick it up: refused too
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused: a vroll checkpoint holds no pickled"):
        find_checkpoint(str(other), tmp_path)


def test_a_run_with_a_critic_needs_the_critics_checkpoint_and_checks_it(tmp_path, tiny_model):
    path = make_checkpoint(tmp_path, 1, tiny_model)
    with pytest.raises(CheckpointError, match="step_1/critic: missing"):
        find_checkpoint(str(path), tmp_path, ("critic",))
    shutil.copytree(tiny_model, path / "critic")
    save_train_state(path / "critic", fake_state())
    assert find_checkpoint(True, tmp_path, ("critic",))[0] == path
    weights = path / "critic" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="critic/model.safetensors: cannot be read"):
        find_checkpoint(str(path), tmp_path, ("critic",))


def test_max_ckpt_to_keep_keeps_the_newest(tmp_path):
    from vroll.pipeline.checkpoint import prune_checkpoints

    for step in (1, 2, 10):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
    assert prune_checkpoints(tmp_path, 0) == []  # ROLL's default: keep all
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == ["step_1"]  # by step number, not by name
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_10", "step_2"]


class InterruptedTrainer:
    """Writes part of a checkpoint, then is interrupted (Ctrl-C) mid-save."""

    def save(self, folder):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt


def test_an_interrupted_save_leaves_nothing_behind(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, InterruptedTrainer(), {})
    assert not list((tmp_path / "checkpoints").iterdir())

    left = tmp_path / "checkpoints" / ".step_1.tmp"  # a killed run's (kill -9: no handler ran)
    left.mkdir()
    with partial_saves_discarded(tmp_path):
        assert not left.exists()
        left.mkdir()  # a trainer rank still writing after the driver was interrupted
    assert not left.exists()


# -- a checkpoint of another model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def narrow_model(tiny_model, tmp_path_factory):
    """The tiny model at half its width (vroll's builder, the tiny model's tokenizer): another model,
    whose tensors have the same names and other shapes."""
    from transformers import AutoTokenizer

    from vroll.models.tiny import TinySpec, build_model

    out = tmp_path_factory.mktemp("models") / "narrow"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    spec = TinySpec(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1)
    build_model(spec, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_tensors_that_do_not_fit_the_model_are_named_from_headers(tmp_path, tiny_model, narrow_model):
    from safetensors.torch import load_file, save_file

    from vroll.models.shapes import model_tensors

    tiny, narrow = {"": model_tensors(tiny_model)}, {"": model_tensors(narrow_model)}
    path = make_checkpoint(tmp_path, 1, tiny_model)
    assert find_checkpoint(str(path), tmp_path, (), tiny)[1]["step"] == 1  # the tied lm_head may be left out
    weights = path / "model.safetensors"
    with pytest.raises(CheckpointError, match=rf"{weights}: does not fit the model \({narrow_model}/config.json\): "
                                              r"tensor 'model.embed_tokens.weight' is \[277, 256\] in the checkpoint, "
                                              r"\[277, 128\] in the model"):
        find_checkpoint(str(path), tmp_path, (), narrow)

    tensors = load_file(weights)
    save_file({**tensors, "model.norm.weight": tensors["model.norm.weight"].to(torch.int8)}, weights)
    with pytest.raises(CheckpointError, match="tensor 'model.norm.weight' is I8 in the checkpoint, floating point"):
        find_checkpoint(str(path), tmp_path, (), tiny)
    save_file({k: v for k, v in tensors.items() if k != "model.layers.0.self_attn.q_proj.bias"}, weights)
    with pytest.raises(CheckpointError, match="'model.layers.0.self_attn.q_proj.bias' is missing from the checkpoint"):
        find_checkpoint(str(path), tmp_path, (), tiny)
    save_file({**tensors, "model.layers.9.mlp.up_proj.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match=r"'model.layers.9.mlp.up_proj.weight' \(\[2\]\) is in the checkpoint, "
                                              "and the model has no tensor"):
        find_checkpoint(str(path), tmp_path, (), tiny)

    save_file(tensors, weights)  # the weights fit again; the optimiser state is another model's
    save_train_state(path, fitting_state(narrow_model))
    with pytest.raises(CheckpointError, match=r"trainer_state.tensors: the optimiser state does not fit the model .*"
                                              r"'exp_avg' of 'model.norm.weight' is \[128\], the parameter is \[256\]"):
        find_checkpoint(str(path), tmp_path, (), tiny)


def test_a_checkpoint_of_another_model_is_skipped_or_named_before_any_engine_starts(
        tmp_path, tiny_model, narrow_model, monkeypatch, caplog, capsys):
    """resume_from_checkpoint: true skips a checkpoint whose tensors do not fit (the step, the file, the
    tensor and both shapes in a warning) for the newest that fits; a named one, or none fitting, is exit 2."""
    from test_rlvr import rl_config
    from vroll.cli.main import main
    from vroll.data.arithmetic import write_dataset

    started = []

    def launcher(cfg, total, model_path, *rest):
        started.append(model_path)
        raise KeyboardInterrupt  # ends the run where its engines would start

    monkeypatch.setattr("vroll.pipeline.rlvr.launch_rlvr_roles", launcher)
    data = write_dataset(tmp_path / "data", n_train=8, n_eval=4, seed=1, max_operand=9)
    out = tmp_path / "run"
    make_checkpoint(out, 1, narrow_model)
    newest = make_checkpoint(out, 2, tiny_model)  # e.g. a run of another model into the same output_dir
    cfg = rl_config(tmp_path, narrow_model, data, resume_from_checkpoint=True, max_steps=3)
    mismatch = (f"{newest / 'model.safetensors'}: does not fit the model ({narrow_model}/config.json): tensor "
                "'model.embed_tokens.weight' is [277, 256] in the checkpoint, [277, 128] in the model")
    with caplog.at_level(logging.WARNING):
        assert main(["train", write_yaml(tmp_path / "c.yaml", cfg)]) == 130
    assert started == [str(out / "checkpoints" / "step_1")]
    assert f"resume: skipping checkpoint step_2: {mismatch}" in caplog.text

    capsys.readouterr()
    cfg["resume_from_checkpoint"] = str(newest)  # named: no fallback
    assert main(["train", write_yaml(tmp_path / "c.yaml", cfg)]) == 2
    err = capsys.readouterr().err
    assert f"error: {mismatch}" in err and "Traceback" not in err
    shutil.rmtree(out / "checkpoints" / "step_1")  # none fits
    cfg["resume_from_checkpoint"] = True
    assert main(["train", write_yaml(tmp_path / "c.yaml", cfg)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "loads and fits" in err and f"step_2: {mismatch}" in err and "Traceback" not in err

    # with a critic (gae): its folder is checked against the critic's value model
    shutil.rmtree(out / "checkpoints")
    ckpt = make_checkpoint(out, 1, narrow_model, critic=tiny_model)
    cfg.update(adv_estimator="gae", num_return_sequences_in_group=2, rollout_batch_size=8, use_kl_loss=False,
               reference=None, resume_from_checkpoint=str(ckpt), reward_pretrain=narrow_model, rewards={
                   "math": {"reward_type": "math_rule", "tag_included": ["arithmetic"]}},
               critic={"model_args": {"dtype": "fp32"}, "training_args": {"per_device_train_batch_size": 8},
                       "strategy_args": {"strategy_name": "fsdp2_train"}, "device_mapping": [0, 1]})
    assert main(["train", write_yaml(tmp_path / "c.yaml", cfg)]) == 2
    err = capsys.readouterr().err
    assert (f"error: {ckpt / 'critic' / 'model.safetensors'}: does not fit the model ({narrow_model}/config.json): "
            "tensor 'model.embed_tokens.weight' is [277, 256]") in err
    assert started == [str(out / "checkpoints" / "step_1")]  # no engine started after the first case

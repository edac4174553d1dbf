"""The demo's promise, CI-sized: the shipped example configs (a supervised warm-up, then GRPO) make the
tiny model measurably better on held-out two-digit additions it never trained on."""

import json
from pathlib import Path

from conftest import REPO
from vroll.config import load_config

EXAMPLES = Path(REPO) / "examples"


def test_example_warm_up_then_rl_raises_held_out_accuracy(tmp_path):
    from vroll.data.arithmetic import write_dataset
    from vroll.models.tiny import TinySpec, build_tiny_model
    from vroll.pipeline.rlvr import run_train
    from vroll.pipeline.sft import run_sft

    model = build_tiny_model(tmp_path / "tiny-std", TinySpec(initializer_range=0.02))
    data = write_dataset(tmp_path / "data", n_train=2000, n_eval=200, n_sft=2000, seed=0, max_operand=99,
                         operators="+")  # what `make data` writes
    files = [f"actor_train.data_args.file_name={data['train']}", f"validation.data_args.file_name={data['eval']}"]

    warm = run_sft(load_config(EXAMPLES / "sft_tiny.yaml", [
        f"pretrain={model}", f"output_dir={tmp_path / 'sft'}", f"actor_train.data_args.file_name={data['sft']}",
        f"validation.data_args.file_name={data['eval']}"]), progress=False)
    assert 0.05 < warm["val/accuracy"] < 0.5  # non-trivial but imperfect: room for RL

    # half the example's steps, validated before and after
    summary = run_train(load_config(EXAMPLES / "rlvr_tiny.yaml", [
        f"pretrain={warm['model']}", f"output_dir={tmp_path / 'rl'}", *files,
        "max_steps=50", "eval_steps=50", "save_steps=50"]), progress=False)
    assert summary["val_accuracy_first"] == warm["val/accuracy"]  # same engine, same weights, same prompts
    assert summary["val_accuracy_last"] >= summary["val_accuracy_first"] + 0.08, summary

    steps = [json.loads(line) for line in open(summary["metrics"]) if '"reward/mean"' in line]
    first, last = steps[:10], steps[-10:]
    assert sum(s["reward/accuracy"] for s in last) > sum(s["reward/accuracy"] for s in first), (first, last)

"""The whole RLVR loop with the real engine and the real trainer, on the tiny model: the weights the
trainer pushes are what vLLM serves, a resumed run equals an uninterrupted one, and roles run
colocated (taking turns) or on separate CPU slots."""

import json
import math

import pytest
import torch

from conftest import assert_gone_within, hf_greedy, interruptible, write_yaml
from vroll.config import load_config
from vroll.data.arithmetic import write_dataset

TIMING = ("time/", "memory/")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), n_train=48, n_eval=8, seed=1, max_operand=9)


def rl_config(tmp_path, model, data, **over) -> dict:
    """A CI-sized run: 4 prompts x 4 responses per step, one optimiser step of 2 micro-batches."""
    cfg = {
        "seed": 5, "pretrain": model, "reward_pretrain": model, "output_dir": str(tmp_path / "run"),
        "max_steps": 1, "save_steps": 1, "eval_steps": 1, "logging_steps": 1,
        "rollout_batch_size": 4, "num_return_sequences_in_group": 4, "prompt_length": 128, "response_length": 8,
        "adv_estimator": "grpo", "init_kl_coef": 0.0, "use_kl_loss": True, "kl_loss_coef": 0.01, "dual_clip_loss": True,
        "validation": {"data_args": {"file_name": str(data["eval"])},
                       "generating_args": {"max_new_tokens": 8, "temperature": 0.0}},
        "actor_train": {
            "model_args": {"dtype": "fp32", "disable_gradient_checkpointing": True},
            "training_args": {"learning_rate": 1e-3, "per_device_train_batch_size": 8,
                              "gradient_accumulation_steps": 2},
            "data_args": {"file_name": str(data["train"])},
            "strategy_args": {"strategy_name": "fsdp2_train"}, "device_mapping": [0, 1]},
        "actor_infer": {
            "model_args": {"dtype": "fp32"}, "generating_args": {"temperature": 1.0},
            "strategy_args": {"strategy_name": "vllm", "strategy_config": {
                "block_size": 32, "max_model_len": 256, "kv_cache_memory_bytes": 64 << 20, "enforce_eager": True,
                "sleep_level": 1}},
            "device_mapping": [0]},
        "reference": {"model_args": {"dtype": "fp32"}, "strategy_args": {"strategy_name": "hf_infer"},
                      "infer_batch_size": 8, "device_mapping": [0]},
        # the rule rarely fires on a random model; the reward model's scores always vary, so every
        # group has an advantage and the step changes the weights
        "rewards": {"math": {"reward_type": "math_rule", "tag_included": ["arithmetic"]},
                    "rm": {"reward_type": "model", "weight": 0.5, "model_args": {"dtype": "fp32"},
                           "strategy_args": {"strategy_name": "hf_infer"}, "infer_batch_size": 8}},
    }
    for key, value in over.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def run(tmp_path, cfg: dict, name="c.yaml"):
    from vroll.pipeline.rlvr import run_train

    return run_train(load_config(write_yaml(tmp_path / name, cfg)), progress=False)


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def run_resumed(tmp_path, straight: dict, stop_at: int) -> list[dict]:
    """`straight`'s file run in tmp_path/b to step `stop_at`, then resumed to its `max_steps`: the
    resumed run's metrics, to compare with an uninterrupted run's."""
    first = json.loads(json.dumps(straight))
    first["output_dir"], first["max_steps"] = str(tmp_path / "b"), stop_at
    run(tmp_path, first, "b1.yaml")
    run(tmp_path, {**first, "max_steps": straight["max_steps"], "resume_from_checkpoint": True}, "b2.yaml")
    return read_metrics(tmp_path / "b" / "metrics.jsonl")


@pytest.mark.parametrize("ranks", [1, 2])
def test_one_step_pushes_weights_that_vllm_serves_like_transformers(tmp_path, tiny_model, data, ranks):
    """One trainer rank in-process, or two Ray rank actors (one CPU slot each, the same global batch)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = rl_config(tmp_path, tiny_model, data)
    if ranks == 2:
        cfg["actor_train"]["strategy_args"]["strategy_config"] = {"cpu_threads_per_rank": 1}
        cfg["actor_train"]["training_args"]["per_device_train_batch_size"] = 4
    summary = run(tmp_path, cfg)
    ckpt = summary["checkpoint"]
    trained = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    before = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert not torch.equal(trained.model.embed_tokens.weight, before.model.embed_tokens.weight)  # it trained
    tok = AutoTokenizer.from_pretrained(ckpt)
    served = [json.loads(line) for line in open(tmp_path / "run" / "validation" / "step_1.jsonl")]
    for row in served:  # validation after step 1 ran on the pushed weights
        want = hf_greedy(trained, tok(row["prompt"], add_special_tokens=False)["input_ids"], 8)
        assert row["response_token_ids"] == want
    step = read_metrics(summary["metrics"])[-1]
    assert step["rollout_weight_version"] == 0 and step["weight_version"] == 1
    assert step["mismatch/logprob_abs_mean"] < 1e-4  # same weights, fp32: engine and trainer agree
    for key in ("reward/mean", "reward/std", "reward/math/mean", "reward/rm/mean", "kl/mean", "train/entropy",
                "train/pg_clipfrac", "train/kl_loss", "train/grad_norm", "response/length_mean", "time/generate",
                "time/weight_sync", "time/sleep", "memory/rss_gib", "val/accuracy"):
        assert key in step, key
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    # the saved file is what ran: the engine's log-prob mode that vroll train chose is in it
    from omegaconf import OmegaConf

    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.actor_infer.strategy_args.strategy_config.logprobs_mode == "processed_logprobs"


def test_resume_equals_uninterrupted(tmp_path, tiny_model, data):
    straight = rl_config(tmp_path / "a", tiny_model, data, max_steps=3, validation=None)
    straight["actor_infer"]["strategy_args"]["strategy_config"]["sleep_level"] = 2
    run(tmp_path, straight, "a.yaml")
    b = run_resumed(tmp_path, straight, 2)
    a = read_metrics(tmp_path / "a" / "run" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3]
    assert without_timings(b) == without_timings(a)
    assert a[-1]["train/grad_norm"] > 0


def test_actor_infer_and_actor_train_on_separate_slots(tmp_path, tiny_model, data):
    cfg = rl_config(tmp_path, tiny_model, data, validation=None)
    cfg["actor_train"]["device_mapping"] = [1]
    cfg["reference"]["device_mapping"] = [1]
    summary = run(tmp_path, cfg)
    step = read_metrics(summary["metrics"])[-1]
    assert "time/sleep" not in step  # not colocated: the engine stays awake
    assert step["weight_version"] == 1 and step["mismatch/logprob_abs_mean"] < 1e-4


def test_train_refuses_impossible_files_before_starting(tmp_path, tiny_model, data):
    import subprocess
    import sys

    from conftest import REPO

    cfg = rl_config(tmp_path, tiny_model, data, rollout_batch_size=3, num_return_sequences_in_group=1)
    cfg["actor_train"]["data_args"]["file_name"] = str(tmp_path / "missing.jsonl")
    cfg["reference"] = None
    cfg["rewards"]["math"]["tag_included"] = ["poetry"]
    path = write_yaml(tmp_path / "bad.yaml", cfg)
    r = subprocess.run([sys.executable, "-m", "vroll.cli.main", "train", path], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for expected in ("actor_train.data_args.file_name: '" + str(tmp_path / "missing.jsonl") + "' does not exist",
                     "rollout_batch_size: rollout_batch_size * num_return_sequences_in_group = 3 is not divisible "
                     "by per_device_train_batch_size * gradient_accumulation_steps * ranks (1) = 16",
                     "num_return_sequences_in_group: 1: grpo normalises within each prompt's group",
                     "use_kl_loss: true needs a `reference` role"):
        assert expected in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written

    cfg = rl_config(tmp_path, tiny_model, data)
    cfg["rewards"] = {"math": {"reward_type": "math_rule", "tag_included": ["poetry"]}}
    cfg["actor_train"]["strategy_args"]["strategy_name"] = "megatron_train"
    r = subprocess.run([sys.executable, "-m", "vroll.cli.main", "train", write_yaml(tmp_path / "bad2.yaml", cfg)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert ("actor_train.strategy_args.strategy_name: strategy 'megatron_train' is not available in vroll; run the "
            "role on fsdp2_train") in r.stderr, r.stderr


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_leaves_whole_checkpoints_and_no_process(tmp_path, tiny_model, data, signum):
    """Ctrl-C, or SIGTERM as a job scheduler sends, during a save: whole checkpoints only, the
    output_dir released, no process left."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from conftest import REPO

    cfg = rl_config(tmp_path, tiny_model, data, max_steps=100, validation=None)
    cfg["actor_train"]["device_mapping"] = [1]  # the engine on its own slot: a Ray actor to clean up
    cfg["reference"]["device_mapping"] = [1]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.Popen([sys.executable, "-m", "vroll.cli.main", "train", write_yaml(tmp_path / "c.yaml", cfg)],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, preexec_fn=interruptible)
    for line in proc.stderr:  # interrupt once a checkpoint exists and the next one is under way
        if "checkpoint saved" in line:
            break
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(getattr(signal, signum))
    assert proc.wait(timeout=120) == 128 + getattr(signal, signum)
    assert "Traceback" not in proc.stderr.read()
    root = tmp_path / "run" / "checkpoints"
    assert not list(root.glob(".*.tmp"))
    for ckpt in root.glob("step_*"):
        assert {"model.safetensors", "config.json", "trainer_state.tensors", "trainer_state.json",
                "vroll_state.json"} <= {p.name for p in ckpt.iterdir()}
    assert not (tmp_path / "run" / ".vroll.lock").exists()  # the run no longer owns output_dir
    psutil.wait_procs(children, timeout=30)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_kill_9_of_train_leaves_no_process_of_its_ray(tmp_path, tiny_model, data):
    """`kill -9` of `vroll train` with its engine on a local Ray: within 10 s no process of that Ray
    session is left (Ray's agents rename themselves and would wait 60 s for the dead GCS)."""
    import os
    import subprocess
    import sys
    import time

    import psutil

    from conftest import REPO

    cfg = rl_config(tmp_path, tiny_model, data, max_steps=100, validation=None)
    cfg["actor_train"]["device_mapping"] = [1]  # the engine on its own slot: a Ray actor
    cfg["reference"]["device_mapping"] = [1]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.Popen([sys.executable, "-m", "vroll.cli.main", "train", write_yaml(tmp_path / "c.yaml", cfg)],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        for line in proc.stderr:
            if "engine(s) ready" in line:
                break
        time.sleep(2.0)
        session = psutil.Process(proc.pid).children(recursive=True)
        assert {"raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= {p.name() for p in session}
        proc.kill()
        proc.wait(timeout=10)
        assert_gone_within(session, 10)
    finally:
        proc.kill()
        proc.stderr.close()


def test_nan_stops_the_run_before_the_optimiser_or_is_skipped_and_counted(tmp_path, tiny_model, data, monkeypatch):
    from safetensors.torch import load_file

    from vroll.pipeline import rlvr
    from vroll.pipeline.health import NonFiniteStep

    real, calls = rlvr.policy_loss, []

    def nan_from_the_second_step(cfg, sizes):  # one optimiser step per RL step here
        calls.append(1)
        fn, poisoned = real(cfg, sizes), len(calls) >= 2
        return lambda *a: (fn(*a)[0] * (float("nan") if poisoned else 1.0), fn(*a)[1])

    monkeypatch.setattr(rlvr, "policy_loss", nan_from_the_second_step)
    cfg = rl_config(tmp_path, tiny_model, data, max_steps=2, validation=None)
    with pytest.raises(NonFiniteStep) as e:
        run(tmp_path, cfg)
    assert str(e.value).startswith("step 2: the loss or gradient norm is not finite (")
    assert "the optimiser step was not applied" in str(e.value) and "learning_rate 0.001" in str(e.value)
    assert "set actor_train.training_args.on_nonfinite: skip" in str(e.value)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_1"]  # no checkpoint of the NaN step
    assert all(t.isfinite().all() for t in load_file(root / "step_1" / "model.safetensors").values())

    calls[:] = [1]  # skip mode, resumed at step 1: step 2 is NaN again, skipped and counted; training goes on
    cfg["actor_train"]["training_args"]["on_nonfinite"] = "skip"
    run(tmp_path, {**cfg, "resume_from_checkpoint": True}, "skip.yaml")
    steps = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["step"], r["train/skipped_steps"]) for r in steps] == [(1, 0.0), (2, 1.0)]
    saved = load_file(root / "step_2" / "model.safetensors")
    assert all(torch.equal(t, load_file(root / "step_1" / "model.safetensors")[k]) for k, t in saved.items())


def test_trainer_ranks_are_checked_before_starting(tmp_path, tiny_model, data):
    from vroll.config import ConfigError
    from vroll.config.rules import check_train_config

    cfg = rl_config(tmp_path, tiny_model, data)
    cfg["actor_train"]["strategy_args"]["strategy_config"] = {"cpu_threads_per_rank": 3, "zero_stage": 3}
    with pytest.raises(ConfigError) as e:  # fsdp2_train's own keys are typed options, checked at load time
        load_config(write_yaml(tmp_path / "a.yaml", cfg))
    found = [str(i) for i in e.value.issues]
    assert any(f.startswith("actor_train.strategy_args.strategy_config.zero_stage: unknown key for fsdp2_train "
                            "(known: cpu_threads_per_rank, ") for f in found), found
    assert "actor_train.strategy_args.strategy_config.cpu_threads_per_rank: 3: must divide the role's 2 CPU " \
           "slots" in found
    cfg["actor_train"]["strategy_args"]["strategy_config"] = {"cpu_threads_per_rank": True}
    with pytest.raises(ConfigError, match="cpu_threads_per_rank: True is not allowed: a whole number >= 1"):
        load_config(write_yaml(tmp_path / "t.yaml", cfg))
    cfg["actor_train"]["strategy_args"]["strategy_config"] = {"cpu_threads_per_rank": 1}  # two ranks
    found = [str(i) for i in check_train_config(load_config(write_yaml(tmp_path / "b.yaml", cfg)), "train", "cpu")]
    assert found == ["rollout_batch_size: rollout_batch_size * num_return_sequences_in_group = 16 is not divisible by "
                     "per_device_train_batch_size * gradient_accumulation_steps * ranks (2) = 32 (one optimiser step)"]


def test_evaluate_scores_a_model_on_the_held_out_prompts(tmp_path, tiny_model, data):
    import subprocess
    import sys

    from conftest import REPO

    from test_checkpoints import make_checkpoint

    cfg = write_yaml(tmp_path / "c.yaml", rl_config(tmp_path, tiny_model, data))
    ckpt = make_checkpoint(tmp_path / "run", 1, tiny_model)  # a checkpoint is a model folder too
    r = subprocess.run([sys.executable, "-m", "vroll.cli.main", "evaluate", cfg, "--model", str(ckpt),
                        "--output", str(tmp_path / "ev")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "val/accuracy: " in r.stdout
    rows = [json.loads(line) for line in open(tmp_path / "ev" / "validation" / "step_0.jsonl")]
    assert len(rows) == 8 and all("response_token_ids" in row for row in rows)
    r = subprocess.run([sys.executable, "-m", "vroll.cli.main", "evaluate", cfg, "validation=null", "--model",
                        tiny_model], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "validation.data_args: is required by `vroll evaluate`" in r.stderr


def test_rolls_algorithm_options_run_through_the_loop(tmp_path, tiny_model, data):
    """Options that change the step's path (formulas: tests/test_algorithms.py) on two real steps."""
    cfg = rl_config(tmp_path, tiny_model, data, validation=None, max_steps=2, save_steps=2,
                    adv_estimator="reinforce", norm_mean_type="running", norm_std_type="batch", whiten_rewards=True,
                    loss_agg_mode="seq-mean-token-sum-norm", pg_variant="cispo", entropy_loss_coef=0.01,
                    add_token_level_kl=True, init_kl_coef=0.05, target_kl=0.01, kl_penalty="k3",
                    length_loss_weight=True,
                    train_infer_correction={"is_weight": {"enabled": True, "weight_type": "geometric"},
                                            "filters": [{"enabled": True, "ratio_low": 0.5, "ratio_high": 2.0}]})
    steps = read_metrics(run(tmp_path, cfg)["metrics"])
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["train/grad_norm"]) and s["train/grad_norm"] > 0 for s in steps)
    assert steps[0]["kl/coef"] == 0.05 and steps[1]["kl/coef"] != 0.05  # target_kl moved it
    assert "time/old_logprobs" in steps[0]  # init_kl_coef > 0: ROLL recomputes the old log-probs
    assert steps[0]["train/kept_frac"] == 1.0


def test_dynamic_sampling_replaces_dropped_groups_within_its_bound(tmp_path, tiny_model, data):
    """Every group is dropped (mean reward <= 100): extra prompts are drawn up to the bound, then the
    dropped groups fill the batch so the step keeps its size."""
    cfg = rl_config(tmp_path, tiny_model, data, validation=None, max_additional_prompts_per_step=6)
    cfg["rewards"]["rm"]["query_filter_config"] = {"type": "mean_filter", "filter_args": {"threshold_down": 100}}
    step = read_metrics(run(tmp_path, cfg)["metrics"])[-1]
    assert step["dynamic/kept_frac_first"] == 0.0 and step["dynamic/drawn_prompts"] == 6.0
    assert step["dynamic/filled_with_dropped"] == 4.0 and step["weight_version"] == 1
    keep_all = rl_config(tmp_path / "k", tiny_model, data, validation=None)
    keep_all["rewards"]["rm"]["query_filter_config"] = {"type": "std_filter", "filter_args": {"std_threshold": -1}}
    step = read_metrics(run(tmp_path, keep_all, "k.yaml")["metrics"])[-1]
    assert step["dynamic/kept_frac_first"] == 1.0 and step["dynamic/drawn_prompts"] == 0.0


def test_ppo_with_a_critic_warms_up_trains_and_resumes_exactly(tmp_path, tiny_model, data):
    """adv_estimator gae: the critic's values give the advantages, the critic trains every step (only
    it during critic_warmup), and its weights and optimiser come back from a checkpoint exactly."""
    critic = {"model_args": {"dtype": "fp32", "disable_gradient_checkpointing": True, "model_type": "trl"},
              "training_args": {"learning_rate": 1e-3, "per_device_train_batch_size": 8},
              "strategy_args": {"strategy_name": "fsdp2_train"}, "device_mapping": [0, 1]}
    straight = rl_config(tmp_path / "a", tiny_model, data, max_steps=3, validation=None, adv_estimator="gae",
                         num_return_sequences_in_group=1, rollout_batch_size=16, use_kl_loss=False,
                         critic_warmup=1, value_clip=0.5, whiten_advantages=True, reference=None)
    straight["critic"] = critic
    a = read_metrics(run(tmp_path, straight, "a.yaml")["metrics"])
    assert "train/pg_loss" not in a[0] and a[0]["weight_version"] == 0  # warm-up: the critic only
    assert all(s["critic/grad_norm"] > 0 and math.isfinite(s["critic/loss"]) for s in a)
    assert "train/pg_loss" in a[1] and a[2]["weight_version"] == 2
    assert (tmp_path / "a" / "run" / "checkpoints" / "step_3" / "critic" / "model.safetensors").is_file()
    assert without_timings(run_resumed(tmp_path, straight, 2)) == without_timings(a)

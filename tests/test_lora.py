"""LoRA with ROLL's keys (`actor_train.model_args.lora_target`, `lora_rank`, ...): only the adapters
train; the engine serves the merged weights exactly as transformers does; the reference is the base
model; a checkpoint is a plain merged model plus peft's adapter folder and resumes exactly; values
that cannot work are refused before anything starts, naming the key, the value and what is allowed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, hf_greedy, write_yaml
from test_rlvr import TIMING, data, read_metrics, rl_config, run  # noqa: F401 (data: the fixture)
from test_trainer import SEQS, nll, padded, train_role
from vroll.config.loader import read_config

TARGETED = ("q_proj.weight", "v_proj.weight")


def lora_role(model, training=None, **model_args):
    role = train_role(model, **{"lr_scheduler_type": "linear", "warmup_steps": 1, "learning_rate": 1e-2,
                                **(training or {})})
    role.model_args.lora_target, role.model_args.lora_rank = "q_proj,v_proj", 4
    for key, value in model_args.items():
        setattr(role.model_args, key, value)
    return role


def logprobs_of(model, ids, mask):
    from vroll.models.logprobs import token_logprobs

    with torch.no_grad():
        return token_logprobs(model, ids, mask)


def test_lora_trains_only_the_adapters_and_saves_a_merged_model_with_its_adapter(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy
    from vroll.strategy.train_state import load_train_state

    ids, mask = padded(SEQS)
    micros = [{"input_ids": ids, "attention_mask": mask}]
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with Fsdp2TrainStrategy(lora_role(tiny_model), total_steps=6) as t:
        trained = [n for n, p in t.model.named_parameters() if p.requires_grad]
        assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
        held = [p for g in t.optimizer.param_groups for p in g["params"]]
        assert len(held) == len(trained) == 4 * 2 * 2  # 4 layers x (q, v) x (A, B): the optimiser holds only them
        before = dict(t.named_weights())
        assert before.keys() == {k for k in base.state_dict() if k != "lm_head.weight"}  # the base model's names
        for _ in range(3):
            t.train_step(micros, nll)
        after = dict(t.named_weights())
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        assert changed == {k for k in after if k.endswith(TARGETED)}  # every adapted weight, nothing else
        # the base is untouched: with the adapters off the trainer is the model it started from
        assert torch.allclose(t.batch_logprobs(ids, mask, disable_adapter=True), logprobs_of(base, ids, mask),
                              atol=1e-6)
        adapted = t.batch_logprobs(ids, mask)
        t.save(tmp_path / "ckpt")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    assert torch.allclose(logprobs_of(merged, ids, mask), adapted, atol=1e-5)  # a plain, merged model
    assert all(torch.equal(merged.state_dict()[k], v) for k, v in after.items())
    # the adapter folder is peft's: on the base it gives the same merged weights
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                      tmp_path / "ckpt" / "adapter").merge_and_unload()
    assert all(torch.allclose(again.state_dict()[k], v, atol=1e-6) for k, v in after.items())
    config = json.loads((tmp_path / "ckpt" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    state = load_train_state(tmp_path / "ckpt")  # safetensors + JSON, the adapters' moments only
    assert len(state["optimizer"]["state"]) == len(trained)


def test_a_resumed_lora_trainer_continues_exactly(tiny_model, tmp_path, monkeypatch):
    """FSDP2 on one rank (the path several ranks take), gradient checkpointing and LoRA dropout on: the
    adapter, optimiser, schedule and RNG come back from the checkpoint."""
    from vroll.pipeline.checkpoint import check_trainer_folder
    from vroll.strategy import fsdp2_train

    monkeypatch.setattr(fsdp2_train, "shards", lambda *_: True)
    ids, mask = padded(SEQS)
    micros = [{"input_ids": ids, "attention_mask": mask}]
    role = lora_role(tiny_model, lora_target="all-linear", lora_dropout=0.1, disable_gradient_checkpointing=False)
    with fsdp2_train.Fsdp2TrainStrategy(role, total_steps=6) as a:
        assert a.sharded
        for _ in range(2):
            a.train_step(micros, nll)
        a.save(tmp_path / "mid")
        straight = [a.train_step(micros, nll) for _ in range(2)]
        straight_weights = dict(a.named_weights())
    check_trainer_folder(tmp_path / "mid")  # the adapter folder is checked with the rest
    with fsdp2_train.Fsdp2TrainStrategy(role, total_steps=6, model_path=str(tmp_path / "mid")) as b:
        b.load_state(tmp_path / "mid")
        resumed = [b.train_step(micros, nll) for _ in range(2)]
        resumed_weights = dict(b.named_weights())
    assert [(s["loss"], s["train/lr"], s["train/grad_norm"]) for s in straight] == \
        [(r["loss"], r["train/lr"], r["train/grad_norm"]) for r in resumed]
    assert all(torch.equal(straight_weights[k], resumed_weights[k]) for k in straight_weights)
    # other LoRA settings do not resume it
    from vroll.config.errors import CheckpointError

    with pytest.raises(CheckpointError, match="other LoRA settings: r 4 .this run: 8."):
        fsdp2_train.Fsdp2TrainStrategy(lora_role(tiny_model, lora_target="all-linear", lora_rank=8), total_steps=6,
                                       model_path=str(tmp_path / "mid"))


def test_a_lora_checkpoint_fits_on_resume_its_optimiser_state_against_the_adapters(tiny_model, tmp_path, data):
    """The resume fit check (`models_to_fit`) under LoRA: the merged weights against the base model, the
    AdamW state against the adapters' (and additional_target's) parameters, as peft names them on the
    meta model; checked against the base model's parameters every LoRA checkpoint would be refused."""
    from vroll.config.errors import CheckpointError
    from vroll.models.shapes import model_tensors
    from vroll.pipeline.checkpoint import find_checkpoint, models_to_fit
    from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy
    from vroll.strategy.train_state import optimizer_shapes

    ids, mask = padded(SEQS)
    with Fsdp2TrainStrategy(lora_role(tiny_model, additional_target="gate_proj"), total_steps=6) as t:
        t.train_step([{"input_ids": ids, "attention_mask": mask}], nll)
        t.save(tmp_path / "ckpt")
        held = {n: tuple(p.shape) for n, p in t.model.named_parameters() if p.requires_grad}
    (tmp_path / "ckpt" / "vroll_state.json").write_text(json.dumps({"step": 1, "data": {"epoch": 0, "position": 4},
                                                                    "weight_version": 1}))
    cfg = rl_config(tmp_path, tiny_model, data)
    cfg["actor_train"]["model_args"].update(lora_target="q_proj,v_proj", lora_rank=4, additional_target="gate_proj")
    fit = models_to_fit(read_config(write_yaml(tmp_path / "c.yaml", cfg)).cfg)
    assert fit[""].trained == held  # the trainer's own names and shapes, derived without weights
    assert {n: s["exp_avg"] for n, s in optimizer_shapes(tmp_path / "ckpt").items()} == held
    assert find_checkpoint(str(tmp_path / "ckpt"), tmp_path, (), fit, lora=True)[1]["step"] == 1

    with pytest.raises(CheckpointError, match=r"optimiser state for 'base_model\.model\..*', and the model has no "
                                              "parameter of that name"):  # why the base model's would not do
        find_checkpoint(str(tmp_path / "ckpt"), tmp_path, (), {"": model_tensors(tiny_model)}, lora=True)
    other = lora_role(tiny_model, lora_rank=8, additional_target="gate_proj").model_args
    with pytest.raises(CheckpointError, match=r"the optimiser state does not fit .*'exp_avg' of 'base_model\.model\."
                                              r"model\.layers\.0\.self_attn\.q_proj\.lora_A\.default\.weight' is "
                                              r"\[4, 256\], the parameter is \[8, 256\]"):
        find_checkpoint(str(tmp_path / "ckpt"), tmp_path, (), {"": model_tensors(tiny_model, lora_args=other)},
                        lora=True)
    with pytest.raises(CheckpointError, match="saved by a run with LoRA .* this run trains every weight"):
        find_checkpoint(str(tmp_path / "ckpt"), tmp_path, (), {"": model_tensors(tiny_model)}, lora=False)


def test_lora_on_two_ray_ranks_trains_like_one_rank_and_resumes(tiny_model, tmp_path):
    """Two rank actors (FSDP2 shards base and adapters) take the same steps as one in-process rank,
    hand out the same merged weights and base log-probs, and save a checkpoint they resume from."""
    from vroll.roles.launcher import launch_role

    seqs = SEQS + [[3, 4, 5, 6, 7, 8]]
    ids, mask = padded(seqs)
    tokens = (mask[:, 1:] * mask[:, :-1]).sum()

    def loss_fn(micro, logp, entropy):  # normalised over the whole step
        m = micro["attention_mask"][:, 1:] * micro["attention_mask"][:, :-1]
        loss = -(logp * m).sum() / tokens
        return loss, {"loss": float(loss.detach())}

    micros = [{"input_ids": ids, "attention_mask": mask}]
    one = lora_role(tiny_model, {"per_device_train_batch_size": 4})
    two = lora_role(tiny_model, {"per_device_train_batch_size": 2})
    two.strategy_args.strategy_config["cpu_threads_per_rank"] = 1
    with launch_role(one, total_steps=6) as a:
        single = [a.train_step(micros, loss_fn) for _ in range(2)]
        single_weights = dict(a.named_weights())
        single_base = a.batch_logprobs(ids, mask, disable_adapter=True)
    with launch_role(two, total_steps=6) as b:
        assert type(b).__name__ == "RayTrainer" and b.world_size == 2
        double = [b.train_step(micros, loss_fn) for _ in range(2)]
        for s, d in zip(single, double):
            assert abs(s["loss"] - d["loss"]) < 1e-5 and abs(s["train/grad_norm"] - d["train/grad_norm"]) < 1e-4
        weights = dict(b.named_weights(bucket_bytes=1 << 16))  # many buckets, merged on the ranks
        assert weights.keys() == single_weights.keys()
        assert max((weights[k] - single_weights[k]).abs().max().item() for k in weights) < 1e-5
        assert torch.allclose(b.batch_logprobs(ids, mask, disable_adapter=True), single_base, atol=1e-5)
        b.save(tmp_path / "ckpt")
        after_save = b.train_step(micros, loss_fn)
    assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").is_file()
    with launch_role(two, total_steps=6, model_path=str(tmp_path / "ckpt")) as c:
        c.load_state(tmp_path / "ckpt")
        resumed = c.train_step(micros, loss_fn)
    assert abs(resumed["loss"] - after_save["loss"]) < 1e-6 and resumed["train/lr"] == after_save["train/lr"]


def lora_run(tmp_path, model, data, **over):
    cfg = rl_config(tmp_path, model, data, **over)
    cfg["actor_train"]["model_args"].update(lora_target="q_proj,v_proj", lora_rank=8)
    cfg["actor_train"]["training_args"]["learning_rate"] = 0.05
    cfg["actor_infer"]["model_args"].update(lora_target="q_proj,v_proj", lora_rank=8)  # ROLL's files set it too
    return cfg


def test_a_lora_run_serves_the_merged_weights_and_resumes_exactly(tmp_path, tiny_model, data, monkeypatch):
    """ROLL's rule for the reference (the trainer's base, no reference role started), the engine's
    greedy answers after each push equal transformers' on the merged checkpoint, and a resumed run
    equals an uninterrupted one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    straight = lora_run(tmp_path / "a", tiny_model, data, max_steps=2)
    loaded = read_config(write_yaml(tmp_path / "a.yaml", straight))
    assert loaded.cfg.reference is None and "reference" in loaded.cfg._differences  # not started under LoRA
    assert "actor_infer.model_args.lora_target" in loaded.cfg._differences  # the engine gets merged weights
    summary = run(tmp_path, straight, "a.yaml")
    ckpt = summary["checkpoint"]
    trained = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert changed == {k for k in base.state_dict() if k.endswith(TARGETED)}
    tok = AutoTokenizer.from_pretrained(ckpt)
    served = [json.loads(line) for line in open(tmp_path / "a" / "run" / "validation" / "step_2.jsonl")]
    differs = 0
    for row in served:  # validation after step 2 ran on the pushed (merged) weights
        prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        assert row["response_token_ids"] == hf_greedy(trained, prompt, 8)
        differs += row["response_token_ids"] != hf_greedy(base, prompt, 8)
    assert differs  # the adapters changed what the engine says
    a = read_metrics(summary["metrics"])
    assert a[-1]["weight_version"] == 2 and a[-1]["mismatch/logprob_abs_mean"] < 1e-4
    assert "kl/mean" in a[-1] and a[-1]["train/kl_loss"] > 0  # against the base, adapters off

    first = json.loads(json.dumps(straight))
    first["output_dir"], first["max_steps"] = str(tmp_path / "b"), 1
    run(tmp_path, first, "b1.yaml")
    from vroll.pipeline import checkpoint

    fitted, check_fit = [], checkpoint.check_fit
    monkeypatch.setattr(checkpoint, "check_fit", lambda path, weights, model: (
        fitted.append(model.trained), check_fit(path, weights, model))[1])
    run(tmp_path, {**first, "max_steps": 2, "resume_from_checkpoint": True}, "b2.yaml")
    assert len(fitted) == 1 and fitted[0]  # the resume's fit check ran, against the adapters' parameters
    b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    strip = [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in (a + b)]
    assert [r["step"] for r in b] == [0, 1, 2] and strip[:3] == strip[3:]


def test_bad_lora_values_are_refused_naming_key_value_and_what_is_allowed(tmp_path, tiny_model, data):
    from vroll.models.lora import config_target_issues

    def issues(**model_args):
        cfg = rl_config(tmp_path, tiny_model, data)
        cfg["actor_train"]["model_args"].update({"lora_target": "q_proj", **model_args})
        loaded = read_config(write_yaml(tmp_path / "c.yaml", cfg))
        found = [str(i) for i in loaded.issues]
        return found or [str(i) for i in config_target_issues(loaded.cfg)]

    key = "actor_train.model_args."
    assert issues(lora_rank=0) == [key + "lora_rank: 0: LoRA's rank must be a whole number >= 1 (ROLL's default 8)"]
    assert issues(lora_alpha=-2) == [key + "lora_alpha: -2: LoRA's alpha must be a whole number >= 1, or null for "
                                           "2 x lora_rank"]
    assert issues(lora_dropout=1.0) == [key + "lora_dropout: 1.0: LoRA's dropout must be a probability in [0, 1)"]
    assert issues(lora_target="all-embedding") == [
        key + "lora_target: 'all-embedding' is not supported: LoRA on embeddings is not in vroll (it adapts Linear "
              "layers); list them in additional_target to train them whole"]
    assert issues(lora_target="q proj") == [
        key + "lora_target: 'q proj': 'q proj' is not a module name; give comma-separated module names "
              "(q_proj,v_proj), all-linear, or one regular expression"]
    allowed = "the model's Linear layers are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    assert issues(lora_target="q_proj,qkv_proj") == [
        key + f"lora_target: 'q_proj,qkv_proj': 'qkv_proj' matches no module of the model ({allowed}; or all-linear)"]
    assert issues(lora_target=".*attn") == [
        key + f"lora_target: '.*attn': '.*attn' matches Qwen2Attention modules, which are not Linear layers: vroll's "
              f"LoRA adapts Linear layers ({allowed})"]
    assert issues(lora_target="lm_head")[0].startswith(
        key + "lora_target: 'lm_head': 'lm_head' matches the output layer lm_head, which this model ties to its input "
              "embedding")
    assert issues(additional_target="embed_tokens")[0].startswith(
        key + "additional_target: 'embed_tokens': 'embed_tokens' matches model.embed_tokens, which this model ties")
    cfg = rl_config(tmp_path, tiny_model, data, adv_estimator="gae")
    cfg["critic"] = {**cfg["actor_train"], "model_args": {"dtype": "fp32", "lora_target": "q_proj"}}
    assert any(str(i).startswith("critic.model_args.lora_target: 'q_proj' is not supported: LoRA on the critic is "
                                 "not in vroll") for i in read_config(write_yaml(tmp_path / "g.yaml", cfg)).issues)

    # `vroll train` names a name the model lacks before any engine or trainer starts
    cfg = lora_run(tmp_path, tiny_model, data)
    cfg["actor_train"]["model_args"]["lora_target"] = "q_proj,qkv_proj"
    r = subprocess.run([sys.executable, "-m", "vroll.cli.main", "train", write_yaml(tmp_path / "bad.yaml", cfg)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "actor_train.model_args.lora_target: 'q_proj,qkv_proj': 'qkv_proj' matches no module" in r.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_the_trainer_memory_estimate_counts_optimiser_state_for_the_adapters_only(tmp_path, tiny_model, data):
    from vroll.config.memory import count_parameters, plan_train_memory

    cfg = read_config(write_yaml(tmp_path / "c.yaml", lora_run(tmp_path, tiny_model, data))).cfg
    plan = plan_train_memory(cfg, "cpu")
    params = count_parameters(Path(tiny_model))
    assert plan.trained == 4 * 8 * ((256 + 256) + (128 + 256))  # 4 layers x rank 8 x (q: 256->256, v: 256->128)
    assert plan.sharded_state_bytes == 4 * params + 16 * plan.trained  # frozen fp32 base; adapters with AdamW
    assert "trained by LoRA (about)" in plan.table()


def test_vroll_sft_under_lora_writes_the_merged_model_and_its_adapter(tiny_model, tmp_path):
    """`vroll sft` goes through the same trainer: with ROLL's LoRA keys only the adapted weights move,
    and output_dir/model is a plain merged model (transformers loads it) with peft's adapter folder."""
    from transformers import AutoModelForCausalLM

    from vroll.config import load_config
    from vroll.data.arithmetic import write_dataset
    from vroll.pipeline.sft import run_sft

    files = write_dataset(tmp_path / "data", n_train=10, n_eval=10, n_sft=64, seed=0, max_operand=99, operators="+")
    cfg = load_config(Path(REPO) / "examples" / "sft_tiny.yaml", [
        f"pretrain={tiny_model}", f"output_dir={tmp_path / 'sft'}", f"actor_train.data_args.file_name={files['sft']}",
        "max_steps=3", "actor_train.device_mapping=[0]", "actor_train.model_args.lora_target=q_proj,v_proj",
        "actor_train.model_args.lora_rank=4", "validation=null", "actor_infer=null"])
    summary = run_sft(cfg, progress=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(summary["model"], dtype=torch.float32).state_dict()
    changed = {k for k in base if k != "lm_head.weight" and not torch.equal(merged[k], base[k])}
    assert changed == {k for k in base if k.endswith(TARGETED)}
    assert (Path(summary["model"]) / "adapter" / "adapter_config.json").is_file()


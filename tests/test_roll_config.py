"""A ROLL user's RLVR file on vroll: every ROLL key known (same, different, no effect, not supported),
strategies vroll lacks named with their override, Hydra defaults, and docs/from-roll.md generated."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_yaml
from vroll.config import ConfigError, load_config
from vroll.config.loader import read_config
from vroll.config.no_effect import no_effect_keys
from vroll.config.rules import check_runnable, check_train_config

MIRROR = Path("/work/.mirror/alibaba+ROLL/repo")

ROLL_FILE = {  # a ROLL RLVR file in the shape of ROLL's examples
    "hydra": {"run": {"dir": "."}, "output_subdir": None},
    "exp_name": "roll-file", "logging_dir": "./output/logs", "system_envs": {"USE_MODELSCOPE": "1"},
    "checkpoint_config": {"type": "file_system", "output_dir": "/data/ckpt"},
    "track_with": "tensorboard", "tracker_kwargs": {"log_dir": "/data/tb"},
    "pretrain": "Qwen/Qwen2.5-7B", "reward_pretrain": "Qwen/Qwen2.5-7B",
    "rollout_batch_size": 64, "prompt_length": 2048, "response_length": 4096, "num_return_sequences_in_group": 8,
    "adv_estimator": "grpo", "init_kl_coef": 0.0, "reward_norm": None,
    "actor_train": {
        "model_args": {"dtype": "bf16", "model_type": None},
        "training_args": {"learning_rate": 1e-6, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 32},
        "data_args": {"template": "qwen2_5", "file_name": ["data/math.jsonl"], "messages": "messages",
                      "domain_interleave_probs": {"math_rule": 1.0}, "preprocessing_num_workers": 16},
        "strategy_args": {"strategy_name": "megatron_train",
                          "strategy_config": {"tensor_model_parallel_size": 2, "use_distributed_optimizer": True}},
        "device_mapping": "list(range(0,16))",
        "infer_batch_size": 4,
        "use_dynamic_batching_in_train": True,
    },
    "actor_infer": {
        "generating_args": {"max_new_tokens": "${response_length}", "temperature": 0.99,
                            "num_return_sequences": "${num_return_sequences_in_group}"},
        "strategy_args": {"strategy_name": "sglang", "strategy_config": {"mem_fraction_static": 0.7,
                                                                         "load_format": "dummy"}},
        "device_mapping": "list([0,1,2,3,8,9,10,11])",
    },
    "reference": {
        "strategy_args": {"strategy_name": "megatron_infer", "strategy_config": {"tensor_model_parallel_size": 1}},
        "device_mapping": "list(range(0,16))",
    },
    "rewards": {
        "math_rule": {"worker_cls": "roll.pipeline.rlvr.rewards.math_rule_reward_worker.MathRuleRewardWorker",
                      "reward_type": "soft", "tag_included": ["deepmath_103k"], "world_size": 8,
                      "model_args": {"model_name_or_path": "${reward_pretrain}"}},
    },
}


def roll_file(tmp_path, **changes) -> str:
    data = copy.deepcopy(ROLL_FILE)
    data.update(changes)
    return write_yaml(tmp_path / "roll.yaml", data)


def issues_of(path, overrides=(), vroll_strategies=False, job=None) -> list[str]:
    loaded = read_config(path, list(overrides), "cuda", vroll_strategies)
    more = (check_train_config(loaded.cfg, job, "cuda") if job else check_runnable(loaded.cfg)) if loaded.cfg else []
    return [str(i) for i in loaded.issues + more]


def vroll(*args):
    return subprocess.run([sys.executable, "-m", "vroll.cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))


def test_every_roll_key_has_a_status():
    from vroll.config.roll_keys import unknown_keys

    assert unknown_keys() == []


def test_the_doc_matches_the_code():
    sys.path.insert(0, f"{REPO}/tools")
    from roll_examples import generated

    from vroll.config.roll_keys import markdown

    doc = Path(REPO, "docs/from-roll.md").read_text()
    assert generated(doc, "roll-keys") == markdown(), "run tools/roll_examples.py --write"


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no local ROLL mirror")
def test_the_doc_matches_rolls_example_files():
    sys.path.insert(0, f"{REPO}/tools")
    from roll_examples import examples_markdown, generated

    doc = Path(REPO, "docs/from-roll.md").read_text()
    assert generated(doc, "roll-examples") == examples_markdown(), "run tools/roll_examples.py --write"


def test_strategies_vroll_lacks_name_the_override(tmp_path):
    found = issues_of(roll_file(tmp_path))
    assert len(found) == 3, found
    assert any(p.startswith("actor_train.strategy_args.strategy_name: strategy 'megatron_train' is not available in "
                            "vroll; run the role on fsdp2_train with the overrides `actor_train.strategy_args."
                            "strategy_name=fsdp2_train actor_train.strategy_args.strategy_config=null`") for p in found)
    assert any("`reference.strategy_args.strategy_name=hf_infer" in p for p in found)
    assert any("`actor_infer.strategy_args.strategy_name=vllm" in p for p in found)
    # the overrides the message gives do run the file
    overrides = [f"{r}.strategy_args.{k}" for r, n in (("actor_train", "fsdp2_train"), ("reference", "hf_infer"),
                                                       ("actor_infer", "vllm"))
                 for k in (f"strategy_name={n}", "strategy_config=null")]
    assert issues_of(roll_file(tmp_path), overrides) == []


def test_use_vroll_strategies_applies_every_override_and_says_so(tmp_path):
    r = vroll("validate", roll_file(tmp_path), "--platform", "none", "--use-vroll-strategies")
    assert r.returncode == 0, r.stderr
    changes = [line for line in r.stderr.splitlines() if line.startswith("# changed by --use-vroll-strategies")]
    assert len(changes) == 3, r.stderr
    assert any("actor_train.strategy_args.strategy_name=fsdp2_train (was megatron_train); dropped megatron_train's "
               "strategy_config keys tensor_model_parallel_size, use_distributed_optimizer" in c for c in changes)
    assert any("actor_infer.strategy_args.strategy_name=vllm (was sglang); renamed strategy_config "
               "mem_fraction_static->gpu_memory_utilization" in c for c in changes)
    cfg = load_config(roll_file(tmp_path), platform="cuda", vroll_strategies=True)
    assert cfg.actor_infer.strategy_args.strategy_config == {"gpu_memory_utilization": 0.7, "load_format": "dummy"}
    assert cfg.reference.strategy_args.strategy_config == {}


def test_validate_job_train_checks_every_role_and_reports_everything_at_once(tmp_path):
    path = roll_file(tmp_path, adv_estimator="gae")  # and a critic that is missing
    r = vroll("validate", path, "--platform", "none", "--job", "train",
              "actor_train.strategy_args.strategy_name=fsdp2_train", "actor_train.strategy_args.strategy_config=null",
              "actor_infer.strategy_args.strategy_name=vllm", "actor_infer.strategy_args.strategy_config=null",
              "actor_infer.generating_args.top_pp=0.9")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for expected in ("reference.strategy_args.strategy_name: strategy 'megatron_infer' is not available",
                     "actor_infer.generating_args.top_pp: unknown key (did you mean 'top_p'?)",
                     "adv_estimator: 'gae' needs a `critic` role", "actor_train.data_args.file_name: "):
        assert expected in r.stderr, r.stderr


def test_keys_with_no_effect_are_named_once_per_section(tmp_path):
    cfg = load_config(roll_file(tmp_path), platform="cuda", vroll_strategies=True)
    found = no_effect_keys(cfg)
    for key in ("hydra", "logging_dir", "checkpoint_config", "reward_norm",
                "actor_train.use_dynamic_batching_in_train", "rewards.math_rule.world_size"):
        assert key in found, key
    assert "actor_train.data_args.domain_interleave_probs" not in found  # read: config/domains.py
    assert "track_with" not in found and "tracker_kwargs" not in found  # read: config/trackers.py
    assert cfg.track_with == "tensorboard" and cfg.tracker_kwargs == {"log_dir": "/data/tb"}
    assert cfg.actor_train.data_args.domain_interleave_probs == {"math_rule": 1.0}
    assert "system_envs" not in found and cfg.system_envs == {"USE_MODELSCOPE": "1"}
    r = vroll("validate", roll_file(tmp_path), "--platform", "none", "--use-vroll-strategies")
    warning = [line for line in r.stderr.splitlines() if "no effect here" in line]
    assert len(warning) == 1 and "model_download_type" not in warning[0] and "logging_dir (" in warning[0]


def test_unknown_keys_stay_errors_with_close_suggestions(tmp_path):
    data = copy.deepcopy(ROLL_FILE)
    data["track_wth"] = "tensorboard"
    data["actor_train"]["use_dynamic_batchng_in_train"] = True
    data["actor_train"]["model_args"]["lora_rnk"] = 8
    found = issues_of(write_yaml(tmp_path / "c.yaml", data), vroll_strategies=True)
    assert any(p.startswith("track_wth: unknown key (did you mean 'track_with'?)") for p in found)
    assert any("use_dynamic_batchng_in_train: unknown key (did you mean 'use_dynamic_batching_in_train'?)" in p
               for p in found)
    assert any(p.startswith("actor_train.model_args.lora_rnk: unknown key (did you mean 'lora_rank'?)") for p in found)


def test_keys_read_with_a_difference(tmp_path):
    data = copy.deepcopy(ROLL_FILE)
    data.update(sequence_length=5120, val_prompt_length=1024, val_sequence_length=3072, rpc_timeout=7200,
                model_update_buffer_size_mb=512, max_grad_norm=0.5,
                validation={"data_args": {"file_name": "v.jsonl"}, "generating_args": {"do_sample": False}})
    data["actor_train"]["worker_cls"] = "roll.pipeline.rlvr.actor_pg_worker.ActorPGWorker"
    data["actor_train"]["pg_variant"] = "topr"
    del data["response_length"]
    data["actor_infer"]["generating_args"]["max_new_tokens"] = 3072
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data), platform="cuda", vroll_strategies=True)
    assert cfg.response_length == 5120 - 2048
    assert cfg.validation.generating_args.max_new_tokens == 2048 and cfg.validation.generating_args.temperature == 0
    options = cfg.actor_infer.strategy_args.options
    assert options.engine_call_timeout_s == 7200 and options.weight_update_bucket_bytes == 512 << 20
    assert cfg.actor_train.training_args.max_grad_norm == 0.5
    assert cfg.pg_variant == "topr"
    assert set(cfg._differences) >= {"sequence_length", "val_sequence_length", "rpc_timeout", "max_grad_norm",
                                     "actor_train.pg_variant", "rewards.math_rule.worker_cls"}
    assert "actor_train.worker_cls" in no_effect_keys(cfg)


def test_reward_workers_by_rolls_class(tmp_path):
    cfg = load_config(roll_file(tmp_path), platform="cuda", vroll_strategies=True)
    assert cfg.rewards["math_rule"].reward_type == "math_verify"  # ROLL's reward_type 'soft' is its worker's option
    assert "never reads" in cfg._differences["rewards.math_rule.worker_cls"]
    data = copy.deepcopy(ROLL_FILE)
    data["rewards"]["code"] = {"worker_cls": "roll.pipeline.rlvr.rewards.code_sandbox_reward_worker."
                                             "CodeSandboxRewardWorker", "use_local": True, "tag_included": ["KodCode"]}
    data["rewards"]["judge"] = {"worker_cls": "roll.pipeline.rlvr.rewards.llm_judge_reward_worker."
                                              "LLMJudgeRewardWorker", "tag_included": ["RLVR"],
                                "judge_prompt": "Qwen2.5-7B-Instruct-RLVR-prompt", "judge_model_type": "inference"}
    data["rewards"]["ifeval"] = {"worker_cls": "roll.pipeline.rlvr.rewards.ifeval_rule_reward_worker."
                                               "GeneralRuleRewardWorker", "tag_included": ["ifeval"],
                                 "reward_type": "soft"}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data), ["rewards.judge=null"], vroll_strategies=True)
    assert cfg.rewards["ifeval"].reward_type == "ifeval"  # ROLL's IFEval rule; its reward_type is never read
    assert "never reads" in cfg._differences["rewards.ifeval.worker_cls"]
    data["rewards"]["ifeval"]["worker_cls"] = "roll.pipeline.rlvr.rewards.detection_reward_worker.DetectionRewardWorker"
    path = write_yaml(tmp_path / "c.yaml", data)
    found = issues_of(path, vroll_strategies=True)
    assert sorted(found)[0] == (  # a vision-language worker: said so
        "rewards.ifeval.worker_cls: ROLL's DetectionRewardWorker (object detection: the boxes in the response against "
        "the row's reward_model ground truth, on the image's grid, with COCO's metrics) scores vision-language rows "
        "(run by ROLL's start_rlvr_vl_pipeline.py), which vroll does not train: vroll's models, data rows and reward "
        "workers are text only; it is not in vroll; remove the worker (`rewards.ifeval=null`: its tags then get no "
        "reward) or route its tags to a vroll worker") and len(found) == 2  # and the judge's, below
    found = issues_of(path, ["rewards.ifeval=null"], vroll_strategies=True)
    assert found == ["rewards.judge.strategy_args.strategy_name: None: judge_model_type: inference serves the judge "
                     "model on vroll's vllm strategy (as ROLL's judge examples do); set vllm"]
    cfg = load_config(path, ["rewards.ifeval=null", "+rewards.judge.strategy_args.strategy_name=vllm"]
                      if False else ["rewards.ifeval=null", "rewards.judge.strategy_args={strategy_name: vllm}"],
                      vroll_strategies=True)
    assert cfg.rewards["judge"].judge_model_type == "inference" and cfg.rewards["judge"].model_args.model_name_or_path
    data["rewards"]["judge"]["judge_model_type"] = "cluster"  # without ROLL's reward_model: said so
    assert issues_of(write_yaml(tmp_path / "c.yaml", data), ["rewards.ifeval=null"], vroll_strategies=True) == [
        "rewards.judge.judge_model_type: 'cluster' asks the judge model of the top-level reward_model section (ROLL's "
        "shared judge server), which the file does not have: add reward_model (model_args, strategy_args vllm, "
        "device_mapping), or use judge_model_type inference (the worker's own model on vllm) or api (an endpoint)"]
    data["rewards"]["judge"]["judge_model_type"] = "inference"
    path = write_yaml(tmp_path / "c.yaml", data)
    overrides = ["rewards.ifeval=null", "rewards.judge.judge_model_type=api",
                 "rewards.judge.judge_api_url=http://localhost:8000/v1"]
    cfg = load_config(path, overrides, vroll_strategies=True)
    assert cfg.rewards["code"].reward_type == "code_sandbox" and cfg.rewards["judge"].reward_type == "llm_judge"
    # the one ROLL worker that reads its reward_type: loose / soft / strict becomes its grading
    data["rewards"]["ctqa"] = {"worker_cls": "roll.pipeline.rlvr.rewards.crossthinkqa_rule_reward_worker."
                                             "CrossThinkQARuleRewardWorker", "reward_type": "strict"}
    path = write_yaml(tmp_path / "c.yaml", data)
    cfg = load_config(path, overrides, vroll_strategies=True)
    assert (cfg.rewards["ctqa"].reward_type, cfg.rewards["ctqa"].grading) == ("crossthinkqa", "strict")
    assert issues_of(path, [*overrides, "rewards.ctqa.reward_type=null"], vroll_strategies=True) == [
        "rewards.ctqa.reward_type: None: ROLL's CrossThinkQARuleRewardWorker needs reward_type loose, soft or strict "
        "(ROLL fails without one)"]
    assert "rewards.code.use_local" in no_effect_keys(cfg)
    # vroll's own math rule chosen beside ROLL's worker_cls (e.g. for <answer> tags, which math-verify does not read)
    cfg = load_config(path, [*overrides, "rewards.math_rule.reward_type=math_rule"], vroll_strategies=True)
    assert cfg.rewards["math_rule"].reward_type == "math_rule"
    assert issues_of(path, [*overrides, "rewards.math_rule.reward_type=format"], vroll_strategies=True) == [
        "rewards.math_rule.reward_type: 'format' contradicts worker_cls MathRuleRewardWorker (vroll's math_verify, "
        "or math_rule)"]


def test_rolls_features_vroll_lacks_are_refused_at_their_enabling_value(tmp_path):
    data = copy.deepcopy(ROLL_FILE)
    data.update(use_opd=True, rl_loss_coef=1.0)
    data["actor_train"]["model_args"].update(lora_target="o_proj,q_proj", lora_rank=32)
    found = issues_of(write_yaml(tmp_path / "c.yaml", data), vroll_strategies=True)
    assert sorted(p.split(":")[0] for p in found) == ["use_opd"]  # LoRA is in vroll (tests/test_lora.py)
    data.update(use_opd=False)
    data["actor_train"]["model_args"]["lora_target"] = None
    path = write_yaml(tmp_path / "c.yaml", data)
    assert issues_of(path, vroll_strategies=True) == []
    cfg = load_config(path, vroll_strategies=True)
    assert cfg.actor_train.model_args.lora_rank == 32 and cfg.actor_train.model_args.lora_target is None


def test_fsdp2_options_are_typed_and_fsdp2_infer_runs_as_hf_infer(tmp_path):
    data = copy.deepcopy(ROLL_FILE)
    data["actor_train"]["strategy_args"] = {"strategy_name": "fsdp2_train", "strategy_config": {
        "param_dtype": "bfloat16", "reduce_dtype": "float32", "reshard_after_forward": True, "offload_policy": False,
        "fsdp_size": 16, "wrap_policy": {"transformer_layer_cls_to_wrap": ["Qwen3DecoderLayer"]}}}
    data["reference"]["strategy_args"] = {"strategy_name": "fsdp2_infer", "strategy_config": {"fsdp_size": 8}}
    path = write_yaml(tmp_path / "c.yaml", data)
    cfg = load_config(path, vroll_strategies=True)
    options = cfg.actor_train.strategy_args.options
    assert (options.param_dtype, options.reduce_dtype, options.fsdp_size) == ("bf16", "fp32", 16)
    assert cfg.reference.strategy_args.strategy_name == "hf_infer" and cfg.reference.strategy_args.strategy_config == {}
    assert "dropped its FSDP options fsdp_size" in cfg._differences["reference.strategy_args.strategy_name"]
    found = no_effect_keys(cfg)
    assert "actor_train.strategy_args.strategy_config.offload_policy" in found
    assert "actor_train.strategy_args.strategy_config.param_dtype" not in found  # honoured
    found = issues_of(path, ["actor_train.strategy_args.strategy_config.param_dtype=int8",
                             "actor_train.strategy_args.strategy_config.fsdp_sise=2"], vroll_strategies=True)
    assert any(p.startswith("actor_train.strategy_args.strategy_config.param_dtype: 'int8' is not allowed")
               for p in found)
    assert any(p.startswith("actor_train.strategy_args.strategy_config.fsdp_sise: unknown key for fsdp2_train")
               for p in found)


def test_hydra_defaults_are_composed_or_refused(tmp_path):
    (tmp_path / "config").mkdir()
    write_yaml(tmp_path / "config" / "base.yaml", {"seed": 1, "rollout_batch_size": 8, "max_steps": 3})
    write_yaml(tmp_path / "run.yaml", {"defaults": ["config/base@_here_"], "seed": 2,
                                       "actor_infer": {"strategy_args": {"strategy_name": "vllm"}},
                                       "pretrain": "some/model"})
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.seed, cfg.rollout_batch_size, cfg.max_steps) == (2, 8, 3)  # the file wins over its defaults
    write_yaml(tmp_path / "self_first.yaml", {"defaults": ["_self_", "config/base"], "seed": 2})
    assert load_config(tmp_path / "self_first.yaml").seed == 1
    for entries, expected in ((["missing@_here_"], "does not exist"), ([{"envs": "gem"}], "config groups"),
                              (["config/base@envs"], "other packages")):
        write_yaml(tmp_path / "bad.yaml", {"defaults": entries})
        with pytest.raises(ConfigError, match=expected):
            load_config(tmp_path / "bad.yaml")


def test_device_mapping_takes_rolls_string_forms():
    from vroll.config.device_mapping import parse_device_mapping

    assert parse_device_mapping("list([0,1,2,3,8,9])") == [0, 1, 2, 3, 8, 9]
    assert parse_device_mapping("[4, 5]") == [4, 5]
    assert parse_device_mapping("list(range(0,2)) + [8]") == [0, 1, 8]
    with pytest.raises(ValueError, match="cannot parse"):
        parse_device_mapping("__import__('os').getcwd()")

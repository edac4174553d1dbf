"""Loading, interpolation, overrides and every validation rule (no engine is started here)."""

import copy
import json
import logging
from pathlib import Path

import pytest

from conftest import REPO, engine_config, write_yaml
from vroll.config import ConfigError, load_config

GUIDE = f"{REPO}/examples/guide_actor_infer.yaml"
WHOLE = f"{REPO}/examples/rlvr_megatron.yaml"


def problems(tmp_path, data, overrides=(), platform=None) -> list[str]:
    path = write_yaml(tmp_path / "c.yaml", data)
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides), platform=platform)
    return [str(i) for i in e.value.issues]


def base(**strategy_config):
    return engine_config("some/model", **strategy_config)


def test_guide_example_resolves_device_mapping_and_interpolations():
    cfg = load_config(GUIDE, platform="cuda")
    role = cfg.actor_infer
    assert role.device_mapping == list(range(12))
    assert role.generating_args.max_new_tokens == 4096 == cfg.response_length
    assert role.generating_args.num_return_sequences == 8
    assert role.model_args.model_name_or_path == "Qwen/Qwen2.5-7B"  # defaulted from `pretrain`
    assert role.strategy_args.strategy_config == {"gpu_memory_utilization": 0.8, "block_size": 16, "max_model_len": 8000}


def test_whole_file_with_other_roles_loads():
    cfg = load_config(WHOLE, platform="cuda")
    assert set(cfg.roles()) == {"actor_infer", "actor_train", "reference", "rewards.math_rule", "rewards.reward_model"}
    assert cfg.actor_train.strategy_args.strategy_name == "megatron_train"
    assert cfg.rewards["reward_model"].model_args.model_name_or_path == "Qwen/Qwen2.5-7B-RM"


def test_unimplemented_strategy_fails_when_used_not_when_loaded():
    from vroll.config.strategies import StrategyNotAvailable
    from vroll.roles.launcher import launch_role

    cfg = load_config(WHOLE, platform="cuda")
    with pytest.raises(StrategyNotAvailable, match="reference.strategy_args.strategy_name: strategy 'megatron_infer' "
                                                   "is not available in vroll; run the role on hf_infer"):
        launch_role(cfg.reference)


def test_overrides_and_interpolation_follow_them():
    cfg = load_config(GUIDE, ["response_length=64", "actor_infer.device_mapping=list(range(2,4))"], platform="cuda")
    assert cfg.actor_infer.generating_args.max_new_tokens == 64
    assert cfg.actor_infer.device_mapping == [2, 3]


def test_block_size_is_checked_against_the_platform():
    cfg = load_config(GUIDE, platform="cuda")
    assert cfg.actor_infer.strategy_args.strategy_config["block_size"] == 16
    with pytest.raises(ConfigError) as e:
        load_config(GUIDE, platform="cpu")
    msg = str(e.value)
    assert "actor_infer.strategy_args.strategy_config.block_size: 16 is not allowed on the CPU backend" in msg
    assert "multiple of 32" in msg and "use 32 or 64" in msg


def test_unknown_keys_suggest_the_closest_name(tmp_path):
    data = base()
    data["actor_infer"]["generating_args"]["top_pp"] = 0.9
    data["actor_infer"]["strategy_args"]["strategy_config"]["gpu_memory_utilisation"] = 0.5
    data["respones_length"] = 3
    found = problems(tmp_path, data)
    assert any(p.startswith("actor_infer.generating_args.top_pp: unknown key (did you mean 'top_p'?)") for p in found)
    assert any(p.startswith("respones_length: unknown key (did you mean 'response_length'?)") for p in found)
    # strategy_config is checked against the installed vLLM's engine arguments
    data["respones_length"] = None
    del data["respones_length"]
    del data["actor_infer"]["generating_args"]["top_pp"]
    found = problems(tmp_path, data)
    assert found == ["actor_infer.strategy_args.strategy_config.gpu_memory_utilisation: unknown vLLM engine argument "
                     "(did you mean 'gpu_memory_utilization'?)"]


def test_all_problems_are_collected_at_once(tmp_path):
    data = base()
    g = data["actor_infer"]["generating_args"]
    g.update(top_p=1.5, temperature=-1, max_new_tokens=0)
    data["actor_infer"]["model_args"]["dtype"] = "float8"
    data["actor_infer"]["infer_batch_size"] = 0
    found = problems(tmp_path, data)
    assert len(found) == 5, found
    joined = "\n".join(found)
    assert "actor_infer.generating_args.top_p: 1.5 is not allowed: input should be less than or equal to 1" in joined
    assert "actor_infer.generating_args.temperature: -1 is not allowed" in joined
    assert "actor_infer.generating_args.max_new_tokens: 0 is not allowed" in joined
    assert "actor_infer.model_args.dtype: 'float8' is not allowed: input should be 'bf16', 'fp16' or 'fp32'" in joined
    assert "actor_infer.infer_batch_size: 0 is not allowed" in joined


def test_beam_search_cannot_return_more_than_num_beams(tmp_path):
    data = base()
    data["actor_infer"]["generating_args"].update(num_beams=2, num_return_sequences=3, top_p=0.9)
    found = problems(tmp_path, data)
    assert ("actor_infer.generating_args.num_return_sequences: 3 is more than num_beams=2: beam search returns at "
            "most num_beams sequences") in found
    assert any(p.startswith("actor_infer.generating_args.top_p: 0.9 is not supported with beam search") for p in found)


def test_device_mapping_must_divide_into_engines(tmp_path):
    data = base(tensor_parallel_size=2)
    data["actor_infer"]["device_mapping"] = "list(range(0,3))"
    found = problems(tmp_path, data)
    assert found == ["actor_infer.device_mapping: 3 devices cannot be split into engines of 2 "
                     "(tensor_parallel_size x pipeline_parallel_size): use a multiple"]


def test_device_mapping_rejects_duplicates_and_unparsable_text(tmp_path):
    data = base()
    data["actor_infer"]["device_mapping"] = [0, 1, 1]
    assert problems(tmp_path, data) == ["actor_infer.device_mapping: [0, 1, 1] names devices [1] more than once; "
                                        "each id may appear once per role"]
    data["actor_infer"]["device_mapping"] = "list(range(0,4)) + [__import__('os')]"
    (p,) = problems(tmp_path, data)
    assert p.startswith("actor_infer.device_mapping: cannot parse") and "list(range(start, stop[, step]))" in p


def test_engine_argument_values_are_type_and_range_checked(tmp_path):
    data = base(gpu_memory_utilization=1.5, enforce_eager="yes", sleep_level=3, logprobs_mode="softmax")
    found = problems(tmp_path, data)
    path = "actor_infer.strategy_args.strategy_config"
    assert f"{path}.gpu_memory_utilization: 1.5 is not allowed: a fraction in (0, 1]" in found
    assert f"{path}.enforce_eager: 'yes' is not allowed: expected bool" in found
    assert any(p.startswith(f"{path}.sleep_level: 3 is not allowed: use 1") for p in found)
    assert any(p.startswith(f"{path}.logprobs_mode: 'softmax' is not allowed: expected one of 'raw_logits'")
               for p in found)


def test_keys_vroll_sets_itself_are_refused_in_strategy_config(tmp_path):
    found = problems(tmp_path, base(dtype="half", model="x"))
    assert "actor_infer.strategy_args.strategy_config.dtype: is set by vroll from model_args.dtype; set it there " \
           "instead" in found
    assert len(found) == 2


def test_max_new_tokens_reaching_max_model_len_warns_that_vllm_cuts_responses(tmp_path, caplog):
    # vLLM 0.32 ends a response when prompt + response reach max_model_len (check_stop: length capped),
    # it does not refuse the request: ROLL's files with max_new_tokens 8192 and max_model_len 8000 run so
    data = base(max_model_len=64)
    data["prompt_length"] = 16
    data["actor_infer"]["generating_args"]["max_new_tokens"] = 64
    with caplog.at_level(logging.WARNING):  # valid: no error
        load_config(write_yaml(tmp_path / "c.yaml", data))
    assert "actor_infer.generating_args.max_new_tokens: 64 reaches actor_infer.strategy_args.strategy_config." \
           "max_model_len 64: vLLM ends each response when prompt + response reach 64 tokens (finish reason " \
           "length), so a response gets at most 64 minus its prompt's tokens (48 after a prompt of prompt_length " \
           "16), never 64" in caplog.text
    caplog.clear()
    data["actor_infer"]["generating_args"]["max_new_tokens"] = 63
    with caplog.at_level(logging.WARNING):
        load_config(write_yaml(tmp_path / "c.yaml", data))
    assert "max_new_tokens" not in caplog.text


def test_prompts_keep_room_for_the_whole_budget_unless_it_reaches_max_model_len():
    from vroll.strategy.prompts import Prompt, PromptError, fit_prompts, reserved_tokens
    assert reserved_tokens(32, 64) == 32 and reserved_tokens(64, 64) == 1 and reserved_tokens(8192, 8000) == 1
    fit = fit_prompts([Prompt(0, list(range(63)))], 64, 64, "error")  # vLLM cuts its response at 64 tokens
    assert fit[0].status == "ok"
    with pytest.raises(PromptError):
        fit_prompts([Prompt(0, list(range(64)))], 64, 64, "error")  # vLLM refuses a prompt of max_model_len
    with pytest.raises(PromptError):
        fit_prompts([Prompt(0, list(range(33)))], 32, 64, "error")  # the whole budget is kept below it


def test_an_engine_argument_the_installed_vllm_renamed_is_read_under_its_new_name(tmp_path):
    # vLLM 0.11 replaced cuda_graph_sizes (ROLL's 140GB Qwen3-235B file sets it) by cudagraph_capture_sizes
    # (a list of sizes) and max_cudagraph_capture_size (one size: the largest, the rest filled in)
    from vroll.config.engine_args import engine_arg_types
    if "cuda_graph_sizes" in engine_arg_types():
        pytest.skip("this vLLM still has cuda_graph_sizes")
    key = "actor_infer.strategy_args.strategy_config"
    cfg = load_config(write_yaml(tmp_path / "c.yaml", base(cuda_graph_sizes=[1, 2, 4, 8])))
    sc = cfg.actor_infer.strategy_args.strategy_config
    assert sc["cudagraph_capture_sizes"] == [1, 2, 4, 8] and "cuda_graph_sizes" not in sc
    assert "calls it cudagraph_capture_sizes (same meaning)" in cfg._differences[f"{key}.cuda_graph_sizes"]
    cfg = load_config(write_yaml(tmp_path / "c.yaml", base(cuda_graph_sizes=[64])))
    assert cfg.actor_infer.strategy_args.strategy_config["max_cudagraph_capture_size"] == 64
    assert problems(tmp_path, base(cuda_graph_sizes=[1, 2], cudagraph_capture_sizes=[4])) == [
        f"{key}.cuda_graph_sizes: is the installed vLLM's cudagraph_capture_sizes, which is set too: keep one"]


def test_strategy_names_are_checked_per_role(tmp_path):
    data = base()
    data["actor_infer"]["strategy_args"]["strategy_name"] = "vlm"
    (p,) = problems(tmp_path, data)
    assert p.startswith("actor_infer.strategy_args.strategy_name: unknown strategy 'vlm' (did you mean 'vllm'?)")
    data["actor_infer"]["strategy_args"]["strategy_name"] = "megatron_train"
    (p,) = problems(tmp_path, data)
    assert p.startswith("actor_infer.strategy_args.strategy_name: 'megatron_train' cannot serve this role "
                        "(it needs a 'generate' strategy")


def test_missing_model_and_missing_strategy(tmp_path):
    data = base()
    del data["pretrain"]
    del data["actor_infer"]["strategy_args"]
    found = problems(tmp_path, data)
    assert "actor_infer.model_args.model_name_or_path: is not set, and there is no top-level `pretrain` to " \
           "default to" in found
    assert "actor_infer.strategy_args.strategy_name: is required (e.g. vllm, hf_infer)" in found


def test_unresolvable_interpolations_are_named(tmp_path):
    data = base()
    data["actor_infer"]["generating_args"]["max_new_tokens"] = "${response_lenght}"
    (p,) = problems(tmp_path, data)
    assert p.startswith("actor_infer.generating_args.max_new_tokens: cannot resolve '${response_lenght}'")


def test_bad_yaml_missing_file_and_bad_override(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("actor_infer: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="override 'seed' is not of the form key.path=value"):
        load_config(GUIDE, ["seed"])


def test_config_errors_do_not_modify_input(tmp_path):
    data = base()
    snapshot = copy.deepcopy(data)
    data["actor_infer"]["generating_args"]["top_k"] = -5
    problems(tmp_path, data)
    data["actor_infer"]["generating_args"]["top_k"] = snapshot["actor_infer"]["generating_args"].get("top_k", -1)
    assert load_config(write_yaml(tmp_path / "ok.yaml", data)).actor_infer.generating_args.top_k == -1


def test_memory_plan_catches_a_kv_cache_too_small_for_max_model_len(tmp_path, tiny_model):
    from vroll.config.memory import plan_memory

    data = engine_config(tiny_model, kv_cache_memory_bytes=500_000)
    plan = plan_memory(load_config(write_yaml(tmp_path / "c.yaml", data)))
    assert plan.kv_bytes_per_token == 2 * 4 * 2 * 64 * 4  # k and v, 4 layers, 2 KV heads, head_dim 64, fp32
    (issue,) = plan.issues()
    assert str(issue).startswith("actor_infer.strategy_args.strategy_config: the KV cache (0.5 MiB) holds 122 "
                                 "tokens, fewer than max_model_len=256: vLLM would refuse to start")
    assert "kv_cache_memory_bytes: 1048576" in str(issue)
    data = engine_config(tiny_model)
    plan = plan_memory(load_config(write_yaml(tmp_path / "c.yaml", data)))
    assert plan.issues() == [] and plan.concurrent_sequences == (64 << 20) // 4096 // 256
    assert "full-length sequences at once" in plan.table()


def test_format_reward_needs_a_valid_pattern(tmp_path):
    data = base()
    data["rewards"] = {"fmt": {"reward_type": "format"}, "bad": {"reward_type": "format", "pattern": "<answer>(\\d+"}}
    joined = "\n".join(problems(tmp_path, data))
    assert "rewards.fmt.pattern: is required for reward_type: format" in joined
    assert "rewards.bad.pattern: '<answer>(\\\\d+' is not a valid regular expression: missing ), unterminated subpattern" in joined


def test_trainer_memory_estimate_follows_ranks_batch_and_vocabulary(tmp_path, tiny_model):
    from vroll.config.memory import count_parameters, plan_train_memory

    data = engine_config(tiny_model)
    data.update(prompt_length=100, response_length=28, rollout_batch_size=4, num_return_sequences_in_group=4)
    data["actor_train"] = {"model_args": {"dtype": "fp32"}, "strategy_args": {"strategy_name": "fsdp2_train",
                                                                              "strategy_config": {"cpu_threads_per_rank": 1}},
                           "training_args": {"learning_rate": 1e-4, "per_device_train_batch_size": 8},
                           "device_mapping": [0, 1]}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", data))
    plan = plan_train_memory(cfg, "cpu")
    params = count_parameters(Path(tiny_model))
    assert plan.ranks == 2 and plan.sharded_state_bytes == 16 * params // 2  # fp32 weights, grads, two moments
    vocab = json.loads((Path(tiny_model) / "config.json").read_text())["vocab_size"]
    assert plan.micro_tokens == 8 * 128 and plan.logits_bytes == 2 * 8 * 128 * vocab * 4  # fp32 logits
    assert plan.checkpointing  # gradient checkpointing is on unless disabled: only layer inputs are kept
    assert "estimated peak per rank" in plan.table()
    assert plan_train_memory(cfg, "cuda").ranks == 2  # one per GPU of device_mapping


def test_non_finite_numbers_are_errors_and_absurd_ones_warnings(tmp_path, caplog):
    import logging
    import subprocess
    import sys

    data = base(gpu_memory_utilization=float("nan"), cpu_offload_gb=float("inf"))
    data["actor_train"] = {"strategy_args": {"strategy_name": "fsdp2_train"},
                           "training_args": {"learning_rate": float("inf"), "max_grad_norm": "nan"}}
    data["rewards"] = {"m": {"query_filter_config": {"type": "mean_filter",
                                                     "filter_args": {"threshold_up": float("inf")}}}}
    found = problems(tmp_path, data)
    assert "actor_train.training_args.learning_rate: inf is not a finite number: give a finite value" in found
    assert "actor_train.training_args.max_grad_norm: 'nan' is not a finite number: give a finite value" in found
    assert "actor_infer.strategy_args.strategy_config.cpu_offload_gb: inf is not a finite number" in "\n".join(found)
    assert any(p.startswith("actor_infer.strategy_args.strategy_config.gpu_memory_utilization: nan") for p in found)
    assert len(found) == 4, found  # threshold_up: .inf means "no bound", and is kept

    data["actor_train"]["training_args"] = {"learning_rate": 1e30}
    del data["actor_infer"]["strategy_args"]["strategy_config"]["gpu_memory_utilization"]
    del data["actor_infer"]["strategy_args"]["strategy_config"]["cpu_offload_gb"]
    with caplog.at_level(logging.WARNING):
        load_config(write_yaml(tmp_path / "c.yaml", data))
    assert "actor_train.training_args.learning_rate: 1e+30 is far above the usual maximum 0.01" in caplog.text

    r = subprocess.run([sys.executable, "-m", "vroll.cli.main", "validate", tmp_path / "c.yaml", "--platform", "none",
                        "actor_train.training_args.learning_rate=.inf"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "actor_train.training_args.learning_rate: inf is not a finite number" in r.stderr

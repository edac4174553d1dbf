"""Every key of ROLL's RLVR configuration and what vroll does with it, read from the code: the tables
of `roll_compat.py` (different, not supported), `no_effect.py` and the schema's fields (same meaning).
`python -m vroll.config.roll_keys --markdown` writes the key tables of docs/from-roll.md."""

from __future__ import annotations

import sys

from vroll.config.loader import TYPED
from vroll.config.no_effect import NOT_A_FIELD, SECTIONS
from vroll.config.options import own_keys
from vroll.config.roll_compat import DIFFERENT, REFUSED_WORKERS, REWARD_WORKERS, UNSUPPORTED
from vroll.config.strategies import STRATEGIES, VROLL_STRATEGY

ROLL_COMMIT = "8eb27cc2dc34c4d1310b169d9b86d339004d811a"
# The fields of ROLL's dataclasses at ROLL_COMMIT, in their order: ScheduleConfig, BaseConfig, PPOConfig and
# RLVRConfig (top level), WorkerConfig (every role), ModelArguments with LoraArguments, TrainingArguments,
# GeneratingArguments, DataArguments, RewardConfig's own fields, and the strategy_config keys ROLL's
# fsdp2_train strategy reads (roll/distributed/strategy/fsdp2_strategy.py, roll/utils/fsdp_utils.py).
ROLL_KEYS: dict[str, tuple[str, ...]] = {
    "": (
        "generate_opt_level", "is_num_return_sequences_expand", "max_running_requests", "is_use_additional_prompts",
        "max_additional_running_prompts", "user_defined_rollout_loop_cls", "router_args", "exp_name", "seed",
        "rpc_timeout", "output_dir", "base_dir", "logging_dir", "rollout_dump_dir", "track_with", "tracker_kwargs",
        "max_steps", "save_steps", "max_ckpt_to_keep", "logging_steps", "eval_steps", "rollout_batch_size",
        "val_batch_size", "local_rank", "resume_from_checkpoint", "checkpoint_config", "prompt_length",
        "response_length", "sequence_length", "val_prompt_length", "val_sequence_length", "profiler_timeline",
        "profiler_memory", "report_length_and_rewards", "is_offload_states",
        "is_offload_optimizer_states_in_train_step", "length_profiler_dir", "profiler_output_dir", "otlp_output_dir",
        "system_envs", "model_update_buffer_size_mb", "num_nodes", "num_gpus_per_node", "model_download_type",
        "rollout_mock", "transfer_backend", "pretrain", "reward_pretrain", "actor_train", "actor_infer", "critic",
        "reference", "reward", "async_generation_ratio", "ppo_epochs", "max_grad_norm", "l2", "lambd", "gamma",
        "pg_clip", "use_pg_clip_range", "pg_clip_low", "pg_clip_high", "value_clip", "kl_penalty", "target_kl",
        "init_kl_coef", "kl_horizon", "use_reward_scaling", "add_len_reward", "reward_clip", "use_reward_norm",
        "whiten_rewards", "whiten_advantages", "advantage_clip", "adv_estimator", "norm_mean_type", "norm_std_type",
        "add_token_level_kl", "critic_warmup", "use_kl_loss", "kl_loss_coef", "entropy_loss_coef", "loss_agg_mode",
        "dual_clip_loss", "enable_reference", "enable_old_logprobs_recompute", "force_disable_old_logprobs_recompute",
        "train_infer_correction", "pure_opd_pipeline_type", "teacher", "student_train", "student_infer",
        "is_pure_opd", "use_opd", "global_template", "tag_to_template", "dataset_filter",
        "num_return_sequences_in_group", "save_logging_board_dir", "validation", "rewards", "reward_model",
        "difficulty_loss_weight", "length_loss_weight", "postive_loss_coef", "use_topr_neg_loss_coef",
        "use_policy_loss_type", "use_topr_loss", "rl_loss_coef", "importance_sampling", "val_greedy", "val_n_sample",
        "max_len_mask", "mask_type", "difficulty_mask", "balance_length", "minibatch_data_iter_num",
        "difficulty_low_threshold", "difficulty_high_threshold", "error_max_len_clip", "error_max_len_threshold"),
    "role": (
        "name", "worker_cls", "pg_variant", "model_args", "training_args", "data_args", "generating_args",
        "strategy_args", "world_size", "device_mapping", "num_gpus_per_worker", "model_update_frequency",
        "infer_batch_size", "backend_timeout", "system_envs", "topr_positive_weight", "topr_negative_weight",
        "max_concurrency", "use_dynamic_batching_in_train", "max_tokens_per_microbatch_in_train",
        "sequence_length_round_in_train", "use_dynamic_batching_in_infer", "max_tokens_per_microbatch_in_infer",
        "sequence_length_round_in_infer", "offload_nccl", "use_sequence_packing", "sequence_packing_args",
        "logits_in_fp32", "router_replay", "apply_loss_scale", "mtp_training_mode", "opd_kl_coef", "tag_included"),
    "model_args": (
        "additional_target", "autocast_adapter_dtype", "lora_alpha", "lora_dropout", "lora_rank", "lora_target",
        "model_name_or_path", "adapter_name_or_path", "attn_implementation", "moe_aux_loss_coef",
        "disable_gradient_checkpointing", "gradient_checkpointing_use_reentrant", "device_map", "dtype", "model_type",
        "num_labels", "model_config_kwargs", "freeze_module_prefix", "ulysses_size"),
    "training_args": (
        "output_dir", "max_steps", "num_train_epochs", "learning_rate", "lr_scheduler_type", "weight_decay",
        "adam_beta1", "adam_beta2", "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "data_seed",
        "dataloader_num_workers", "fp16", "bf16", "tf32", "warmup_ratio", "warmup_steps", "save_hf_model"),
    "generating_args": (
        "do_sample", "temperature", "top_p", "top_k", "num_beams", "max_length", "max_new_tokens",
        "repetition_penalty", "length_penalty", "num_return_sequences", "stop_strings", "include_stop_str_in_output",
        "logprobs"),
    "data_args": (
        "template", "domain_interleave_probs", "preprocessing_num_workers", "file_name", "eval_file_name",
        "dataset_type", "tag", "id", "prompt", "response", "messages", "image_max_pixels", "image_min_pixels",
        "video_max_pixels", "video_min_pixels", "video_total_pixels", "video_fps", "video_max_frames",
        "video_resize_chunk_frames", "image_folder", "video_folder", "audio_folder", "custom_data_kwargs_func"),
    "reward": (
        "code_url", "use_local", "judge_prompt", "judge_model_type", "judge_model_name", "judge_api_url",
        "judge_api_key", "format_pattern", "reward_type", "response_length_penalty_coef", "tag_included",
        "query_filter_config", "response_filter_config", "reward_manager_config", "worker_cls"),
    "strategy_config.fsdp2_train": (
        "param_dtype", "reduce_dtype", "reshard_after_forward", "offload_policy", "fsdp_size", "wrap_policy",
        "apply_expert_patch", "ep_size", "efsdp_size", "moe_use_grouped_mm", "apply_tiled_mlp", "tiled_num_shards",
        "async_save_ckpt", "save_only_model", "reduce_scatter_during_grad_accumulation"),
    "strategy_name": ("hf_infer", "vllm", "sglang", "megatron_infer", "megatron_train", "fsdp2_train", "fsdp2_infer"),
}
TITLES = {"": "Top level (ScheduleConfig, BaseConfig, PPOConfig, RLVRConfig)",
          "role": "Every role: `actor_train`, `actor_infer`, `reference`, `critic`, `rewards.<name>` (WorkerConfig)",
          "model_args": "`<role>.model_args` (ModelArguments, LoraArguments)",
          "training_args": "`<role>.training_args` (TrainingArguments)",
          "generating_args": "`<role>.generating_args`, `validation.generating_args` (GeneratingArguments)",
          "data_args": "`<role>.data_args`, `validation.data_args` (DataArguments)",
          "reward": "`rewards.<name>`, besides the role keys (RewardConfig)",
          "strategy_config.fsdp2_train": "`strategy_config` of `fsdp2_train` (typed in config/options.py)",
          "strategy_name": "`strategy_args.strategy_name`"}
# sections whose own vroll fields count as "same" (the rest of vroll's schema is read by the loader)
_SAME = {"": "PipelineConfig", "role": "RoleConfig", "reward": "RewardConfig", "model_args": "ModelArgs",
         "training_args": "TrainingArgs", "generating_args": "GeneratingArgs", "data_args": "DataArgs"}

SAME, DIFF, NO_EFFECT, NOT_SUPPORTED = "same", "different", "no effect here", "not supported"


def status(section: str, key: str) -> tuple[str, str]:
    """(status, why) of one ROLL key; ("unknown", "") when vroll has no answer (a test keeps that empty)."""
    if section == "strategy_name":
        return _strategy_status(key)
    if key in UNSUPPORTED.get(section, {}):
        return NOT_SUPPORTED, "refused unless left at ROLL's neutral value: " + UNSUPPORTED[section][key][1]
    if key in DIFFERENT.get(section, {}):
        return DIFF, DIFFERENT[section][key]
    if key in SECTIONS.get(section, {}):
        return NO_EFFECT, SECTIONS[section][key]
    if section == "strategy_config.fsdp2_train":
        return (SAME, "honoured by vroll's fsdp2_train") if key in own_keys("fsdp2_train") else ("unknown", "")
    return (SAME, "") if key in TYPED.get(section, ()) else ("unknown", "")


def _strategy_status(name: str) -> tuple[str, str]:
    if name in DIFFERENT["strategy_name"]:
        return DIFF, DIFFERENT["strategy_name"][name]
    info = STRATEGIES[name]
    if info.implemented:
        return SAME, ""
    runs_on = ", ".join(f"{need} roles on {VROLL_STRATEGY[need]}" for need in VROLL_STRATEGY if need in info.kinds)
    return NOT_SUPPORTED, (f"not available in vroll: the error names the override that runs {runs_on}; "
                           "`vroll validate --use-vroll-strategies` applies them all")


def markdown() -> str:
    """The key tables of docs/from-roll.md."""
    lines = [f"Generated by `python -m vroll.config.roll_keys --markdown` from ROLL's keys at commit `{ROLL_COMMIT[:7]}`"
             " and vroll's tables (config/roll_compat.py, config/no_effect.py, config/schema.py, config/options.py).",
             ""]
    for section, keys in ROLL_KEYS.items():
        lines += [f"### {TITLES[section]}", "", "| key | status | how vroll reads it |", "|---|---|---|"]
        for key in keys:
            state, why = status(section, key)
            lines.append(f"| `{key}` | {state} | {why.replace('|', '/')} |")
        lines.append("")
    extra = [(s, k, why) for s, table in SECTIONS.items() for k, why in table.items() if why.startswith(NOT_A_FIELD)]
    lines += ["### Keys ROLL's example files set that are not fields of its classes (ROLL drops them)", "",
              "| section | key | status |", "|---|---|---|"]
    lines += [f"| {s or 'top level'} | `{k}` | {NO_EFFECT}{why[len(NOT_A_FIELD):]} |" for s, k, why in extra]
    lines += ["", "### ROLL's reward workers (`rewards.<name>.worker_cls`)", "", "| ROLL class | vroll |", "|---|---|"]
    lines += [f"| `{cls}` | {kind or ('refused: ' + REFUSED_WORKERS[cls] if cls in REFUSED_WORKERS else 'not in vroll yet (an error naming it)')} |"
              for cls, kind in REWARD_WORKERS.items()]
    return "\n".join(lines) + "\n"


def unknown_keys() -> list[str]:
    """ROLL keys vroll has no answer for (kept empty by a test)."""
    return [f"{s}:{k}" for s, keys in ROLL_KEYS.items() for k in keys if status(s, k)[0] == "unknown"]


if __name__ == "__main__":
    if "--markdown" not in sys.argv[1:]:
        sys.exit("usage: python -m vroll.config.roll_keys --markdown")
    sys.stdout.write(markdown())

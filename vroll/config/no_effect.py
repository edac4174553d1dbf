"""ROLL keys that vroll accepts and that change nothing here, each with the reason: a file that sets
one is told so in one warning line (by `vroll validate` and at the start of a run), never silently.

The tables are by section; the loader records every such key the file sets (`record_no_effect`) and
removes the ones vroll's schema does not type, so they pass the schema's unknown-key check."""

from __future__ import annotations

from typing import Any, Iterator

NEVER_READ = "ROLL declares it and never reads it"
NOT_A_FIELD = "not a field of ROLL's config classes: ROLL drops it too (its examples set it)"
PROFILING = "vroll has no profiler switches; each step's phase times and memory go to metrics.jsonl"
DYNAMIC_BATCHING = "vroll pads each micro-batch to its longest row (no dynamic batching or packing); the loss is the same"
NO_OPD = "on-policy distillation is not in vroll (read only with use_opd / is_pure_opd)"

# top-level keys
TOP = {
    "mask_type": NEVER_READ,
    "add_len_reward": NEVER_READ,
    "use_reward_scaling": NEVER_READ,
    "use_reward_norm": NEVER_READ,
    "l2": NEVER_READ,
    "postive_loss_coef": NEVER_READ,
    "use_topr_neg_loss_coef": NEVER_READ,
    "use_topr_loss": NEVER_READ,
    "use_policy_loss_type": NEVER_READ,
    "balance_length": NEVER_READ,
    "minibatch_data_iter_num": NEVER_READ,
    "val_greedy": "ROLL's RLVR pipeline never reads it; greedy validation is validation.generating_args.temperature: 0",
    "val_n_sample": "ROLL's RLVR pipeline never reads it; samples per held-out prompt are "
                    "validation.generating_args.num_return_sequences",
    "save_logging_board_dir": NEVER_READ,
    "base_dir": "vroll writes everything under output_dir",
    "logging_dir": "vroll logs to stderr; what a run leaves is under output_dir",
    "rollout_dump_dir": "vroll dumps no rollouts; held-out answers go to output_dir/validation",
    "checkpoint_config": "vroll saves Hugging Face folders to output_dir/checkpoints/step_N and uploads nothing",
    "local_rank": "set by ROLL's launcher; vroll places its ranks itself",
    "profiler_timeline": PROFILING,
    "profiler_memory": PROFILING,
    "report_length_and_rewards": PROFILING,
    "length_profiler_dir": PROFILING,
    "profiler_output_dir": PROFILING,
    "otlp_output_dir": PROFILING,
    "is_offload_states": "a colocated engine sleeps at its strategy_config.sleep_level; the trainer's state stays on "
                         "its device",
    "is_offload_optimizer_states_in_train_step": "the optimiser state stays on the trainer's device",
    "num_nodes": "ROLL derives it from device_mapping and num_gpus_per_node (overwriting the file's value); vroll "
                 "places roles by device_mapping",
    "model_download_type": "vroll loads local folders or the Hugging Face cache and downloads nothing",
    "val_batch_size": "vroll's validation sends all held-out prompts to the engine at once",
    "max_running_requests": "vroll sends the whole batch to vLLM, whose max_num_seqs (strategy_config) bounds it",
    "generate_opt_level": "vroll always generates a batch through vLLM's scheduler",
    "is_num_return_sequences_expand": "vroll asks vLLM for n samples per prompt; the samples are the same",
    "router_args": "vroll's engines share no router; each prompt's group goes to one engine",
    "transfer_backend": "weights travel by vroll's own transport (docs/architecture.md)",
    "rollout_mock": "vroll has no rollout dump / mock mechanism",
    "reward": "ROLL's RLVR pipeline builds its reward workers from `rewards`",
    "teacher": NO_OPD, "student_train": NO_OPD, "student_infer": NO_OPD, "pure_opd_pipeline_type": NO_OPD,
    "hydra": "Hydra's own settings (run directory); vroll does not run through Hydra",
    # set by ROLL's example files although ROLL's classes have no such field
    "reward_norm": NOT_A_FIELD, "reward_shift": NOT_A_FIELD, "reward_scale": NOT_A_FIELD,
    "positive_loss_coef": NOT_A_FIELD, "offload_nccl": NOT_A_FIELD,
    "lora_rank": NOT_A_FIELD + "; only actor_train.model_args.lora_target turns LoRA on",
    "lora_alpha": NOT_A_FIELD, "lora_target": NOT_A_FIELD + "; only actor_train.model_args.lora_target turns LoRA on",
}
# keys of every role (ROLL's WorkerConfig); reward workers included
ROLE = {
    "name": "vroll names a role by its key in the file",
    "worker_cls": "vroll's roles have fixed classes; the loss follows the top-level pg_variant",
    "world_size": "ROLL derives it from device_mapping (a rule reward's: its scoring processes); vroll derives "
                  "ranks from device_mapping and scores rules in its own process",
    "num_gpus_per_worker": "derived from device_mapping and tensor_parallel_size, as ROLL does",
    "model_update_frequency": "vroll pushes the weights after every step, as ROLL's RLVR pipeline does (frequency 1)",
    "backend_timeout": "vroll's deadlines are strategy_config.engine_call_timeout_s and weight_update_timeout_s",
    "max_concurrency": "a Ray setting of ROLL's workers; vroll's actors take one call at a time",
    "use_dynamic_batching_in_train": DYNAMIC_BATCHING,
    "max_tokens_per_microbatch_in_train": DYNAMIC_BATCHING,
    "sequence_length_round_in_train": DYNAMIC_BATCHING,
    "use_dynamic_batching_in_infer": DYNAMIC_BATCHING,
    "max_tokens_per_microbatch_in_infer": DYNAMIC_BATCHING,
    "sequence_length_round_in_infer": DYNAMIC_BATCHING,
    "use_sequence_packing": DYNAMIC_BATCHING,
    "sequence_packing_args": DYNAMIC_BATCHING,
    "offload_nccl": "ROLL forces it to false itself",
    "logits_in_fp32": "vroll always computes log-probs from fp32 logits",
    "router_replay": "MoE routing replay is Megatron's and SGLang's; not in vroll",
    "mtp_training_mode": "vroll trains no multi-token-prediction heads",
    "opd_kl_coef": NO_OPD,
    "tag_included": "routes prompts to ROLL's distillation teachers; a reward worker's tag_included is read",
    "use_remove_padding": NOT_A_FIELD,
}
MODEL_ARGS = {
    "attn_implementation": "vroll loads models with transformers' default attention",
    "moe_aux_loss_coef": "read by ROLL's Megatron strategy only",
    "gradient_checkpointing_use_reentrant": "vroll's gradient checkpointing is transformers' default",
    "device_map": "vroll places the weights itself (FSDP2 or one device)",
    "num_labels": "vroll's value head has one output",
    "ulysses_size": "vroll has no sequence parallelism; each rank holds whole sequences",
    "autocast_adapter_dtype": "vroll's adapters are fp32 always (its master weights are fp32), which is what "
                              "ROLL's default true gives",
    "adapter_name_or_path": NEVER_READ + " (its trainer starts a fresh adapter)",
    "flash_attn": NOT_A_FIELD,
}
TRAINING_ARGS = {
    "output_dir": "vroll writes under the top-level output_dir",
    "max_steps": "the top-level max_steps drives the loop (ROLL overwrites this one with it)",
    "seed": "the top-level seed is used (ROLL overwrites this one with it)",
    "data_seed": "vroll's prompt order follows the top-level seed",
    "dataloader_num_workers": "vroll reads the prompts in its own process",
    "fp16": "ROLL sets it from model_args.dtype; so does vroll",
    "bf16": "ROLL sets it from model_args.dtype; so does vroll",
    "tf32": "vroll leaves torch's TF32 setting as it is",
    "save_hf_model": "vroll's checkpoints are always Hugging Face folders",
}
GENERATING_ARGS = {
    "max_length": "vLLM stops at max_new_tokens (or max_model_len); a total-length cap is not passed",
}
DATA_ARGS = {
    "preprocessing_num_workers": "vroll reads the prompts in its own process",
    "eval_file_name": "held-out prompts are validation.data_args.file_name",
    "dataset_type": "vroll reads JSON lines, whatever the name says",
    "id": "vroll numbers the rows itself",
    "response": "vroll's reward workers read the row's `ground_truth` (as ROLL's math worker does)",
    "tag": "vroll routes rows by their `tag` field",
    "custom_data_kwargs_func": "ROLL's plug-in hook; vroll reads plain rows",
    **{k: "vision-language input is not in vroll" for k in (
        "image_max_pixels", "image_min_pixels", "video_max_pixels", "video_min_pixels", "video_total_pixels",
        "video_fps", "video_max_frames", "video_resize_chunk_frames", "image_folder", "video_folder", "audio_folder")},
    "dataset_dir": NOT_A_FIELD,
    "interleave_probs": NOT_A_FIELD,
}
# keys of a reward worker (ROLL's RewardConfig) besides its role keys
REWARD = {
    "response_filter_config": "ROLL never applies it (query_filter_config is the one that filters)",
    "response_length_penalty_coef": "only ROLL's crossthinkqa worker reads it (on the padded length of the "
                                    "batch's responses); vroll's workers, its crossthinkqa included, have no length "
                                    "penalty",
    "code_url": "ROLL's HTTP code sandbox; vroll's code_sandbox always runs the tests in its local sandbox",
    "use_local": "vroll's code_sandbox is always local (ROLL's use_local: true)",
    "format_pattern": "read only by ROLL's format-checking workers; vroll's format worker reads `pattern`",
}
VALIDATION = {
    "eval_steps": NOT_A_FIELD + "; the top-level eval_steps sets how often validation runs",
}
# ROLL's fsdp2_train strategy_config keys vroll accepts (typed in options.py) and cannot honour yet
FSDP2_TRAIN = {
    "reshard_after_forward": "vroll's FSDP2 reshards after each forward (ROLL's default)",
    "offload_policy": "vroll keeps parameters and optimiser state on the device (no CPU offload yet)",
    "fsdp_size": "vroll shards over all of the role's ranks (no hybrid sharding)",
    "wrap_policy": "vroll wraps each decoder layer and the whole model",
    "apply_expert_patch": "no MoE expert parallelism in vroll",
    "ep_size": "no MoE expert parallelism in vroll",
    "efsdp_size": "no MoE expert parallelism in vroll",
    "moe_use_grouped_mm": "no MoE expert parallelism in vroll",
    "apply_tiled_mlp": "vroll runs the model's own MLP",
    "tiled_num_shards": "vroll runs the model's own MLP",
    "async_save_ckpt": "vroll saves checkpoints synchronously (and atomically)",
    "save_only_model": "vroll's checkpoints hold the model and the optimiser state",
    "reduce_scatter_during_grad_accumulation": "vroll reduces gradients once per optimiser step",
    "use_batched_model_update": NOT_A_FIELD,
}
SECTIONS = {"": TOP, "role": ROLE, "reward_role": {k: v for k, v in ROLE.items() if k != "tag_included"}, "model_args": MODEL_ARGS, "training_args": TRAINING_ARGS,
            "generating_args": GENERATING_ARGS, "data_args": DATA_ARGS, "reward": REWARD, "validation": VALIDATION,
            "strategy_config.fsdp2_train": FSDP2_TRAIN}
ROLES = ("actor_train", "actor_infer", "reference", "critic", "reward_model")


def sections(raw: dict[str, Any]) -> Iterator[tuple[str, str, dict]]:
    """(path prefix, section name, the mapping) for every section of a resolved file that has NO_EFFECT keys."""
    yield "", "", raw
    parts = [(k, raw.get(k), False) for k in ROLES]
    rewards = raw.get("rewards")
    parts += [(f"rewards.{k}", v, True) for k, v in rewards.items()] if isinstance(rewards, dict) else []
    for path, role, reward in parts:
        if not isinstance(role, dict):
            continue
        yield f"{path}.", "reward_role" if reward else "role", role
        if reward:
            yield f"{path}.", "reward", role
        for sub in ("model_args", "training_args", "generating_args", "data_args"):
            if isinstance(role.get(sub), dict):
                yield f"{path}.{sub}.", sub, role[sub]
        strategy = role.get("strategy_args")
        if isinstance(strategy, dict) and isinstance(strategy.get("strategy_config"), dict):
            yield f"{path}.strategy_args.strategy_config.", f"strategy_config.{strategy.get('strategy_name')}", \
                strategy["strategy_config"]
    if isinstance(raw.get("validation"), dict):
        yield "validation.", "validation", raw["validation"]


def record_no_effect(raw: dict[str, Any], typed: dict[str, set[str]]) -> dict[str, str]:
    """The no-effect keys the file sets (path -> why). Those not in `typed` (section -> the schema's own
    field names) are removed from `raw`, so the schema accepts the file."""
    found = {}
    for prefix, section, mapping in list(sections(raw)):
        for key, why in SECTIONS.get(section, {}).items():
            if key in mapping:
                found[prefix + key] = why
                if key not in typed.get(section, ()):
                    del mapping[key]
    return found


def no_effect_keys(cfg) -> dict[str, str]:
    """The keys the file sets that have no effect here, with why."""
    found = {k: why for k, why in TOP.items() if k in cfg.model_fields_set}
    for name, worker in cfg.rewards.items():
        found.update({f"rewards.{name}.{k}": why for k, why in REWARD.items() if k in worker.model_fields_set})
    found.update(getattr(cfg, "_no_effect", None) or {})
    return found


def no_effect_line(cfg) -> str | None:
    """One warning line naming them, or None."""
    found = no_effect_keys(cfg)
    if not found:
        return None
    return "accepted, no effect here: " + "; ".join(f"{k} ({why})" for k, why in found.items())

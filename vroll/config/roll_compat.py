"""ROLL keys vroll adopts with a difference, and ROLL settings it refuses. `adopt_roll_keys` rewrites
the resolved file into vroll's keys before the schema reads it; each difference is noted (path -> what
was done), each refusal is an Issue that names the fix."""

from __future__ import annotations

from typing import Any, Callable

from vroll.config.engine_args import adopt_renamed_args
from vroll.config.errors import Issue
from vroll.config.no_effect import ROLES

# section -> key -> how vroll reads it (the doc's "different" column)
DIFFERENT = {
    "": {
        "sequence_length": "ROLL's total length: vroll sets response_length = sequence_length - prompt_length "
                           "(ROLL's rule; sequence_length wins over response_length)",
        "val_sequence_length": "with val_prompt_length: validation.generating_args.max_new_tokens = "
                               "val_sequence_length - val_prompt_length (ROLL's rewrite); held-out prompts are "
                               "still limited by prompt_length",
        "val_prompt_length": "see val_sequence_length",
        "rpc_timeout": "the deadline of each call to an engine actor: strategy_config.engine_call_timeout_s of "
                       "every vllm role that does not set it",
        "model_update_buffer_size_mb": "the weight bucket: strategy_config.weight_update_bucket_bytes of every "
                                       "vllm role that does not set it",
        "max_grad_norm": "read as training_args.max_grad_norm of actor_train and critic (where not set there)",
        "track_with": "tensorboard (ROLL's default), wandb (offline only: WANDB_MODE=offline) or stdout (ROLL's "
                      "metrics_tag line per step), besides output_dir/metrics.jsonl, always written; null: none; "
                      "ROLL's swanlab and trackio (online) are refused; tensorboard left as the default is skipped "
                      "when not installed, named it is required (config/trackers.py)",
        "tracker_kwargs": "tensorboard: log_dir (events in log_dir/exp_name/<start time>, as ROLL; without it "
                          "output_dir/tensorboard) and SummaryWriter's comment, purge_step, max_queue, flush_secs, "
                          "filename_suffix; wandb: project, name, tags, notes, group, log_dir (wandb's dir, default "
                          "output_dir), mode offline or disabled, api_key accepted and unused; other keys are errors",
        "global_template": "ROLL's meaning (the template of every row whose tag has none in tag_to_template; over "
                           "actor_train.data_args.template): ROLL's names native, qwen2_5, qwen3, chatml, empty, "
                           "longcot_V3, or an entry of vroll's prompt_templates (a system prompt and an instruction "
                           "with {content}); ROLL's base and longCOT_qwen2.5 (ROLL's own instruction text) are refused "
                           "with the prompt_templates route; rows with a plain `prompt` are sent as written, as in ROLL",
        "tag_to_template": "ROLL's meaning (tag -> template, for training and validation rows), names as "
                           "global_template; a tag no row has is refused",
        "system_envs": "set in vroll's process before any role starts, so in-process roles and the Ray actors "
                       "the run starts inherit them; workers of a joined cluster (ray_address) do not",
        "reward_model": "ROLL's shared judge server (a generating role, ROLL's InferWorker on vLLM): started, on "
                        "vroll's vllm strategy on its device_mapping (hf_infer generates on vllm), only when a "
                        "judge_model_type: cluster judge asks it, as one engine those judges share; its "
                        "generating_args and data_args.template are not read (each judge sends its own generating_args; "
                        "prompts take the judge model's own chat template); without such a judge it is not started "
                        "(ROLL starts it and nothing asks it), with a note",
    },
    "role": {
        "system_envs": "set in each of the role's Ray actors (over the top-level system_envs, as in ROLL); a role "
                       "that runs in vroll's process (a one-rank trainer, one engine sharing the trainer's devices, "
                       "hf_infer models, rule reward workers) sets them in that process when it starts, where every "
                       "role of the process sees them (a note line says so); CUDA_VISIBLE_DEVICES is refused (vroll "
                       "pins each actor from device_mapping)",
        "pg_variant": "actor_train's, with worker_cls ActorPGWorker (the worker that reads it), sets vroll's "
                      "top-level pg_variant",
        "topr_positive_weight": "actor_train's sets vroll's top-level topr_positive_weight",
        "topr_negative_weight": "actor_train's sets vroll's top-level topr_negative_weight",
    },
    "reward": {
        "worker_cls": "chooses vroll's reward worker (reward_type): MathRuleRewardWorker is vroll's math_verify "
                      "(ROLL's math-verify check, 1 or 0), CodeSandboxRewardWorker its code_sandbox (ROLL's "
                      "use_local path, in vroll's sandbox), CrossThinkQARuleRewardWorker its crossthinkqa, "
                      "MultipleChoiceBoxedRuleRewardWorker and GeneralValRuleRewardWorker its choice_boxed and "
                      "choice_val (reward 0, accuracy only, as ROLL's), GeneralRuleRewardWorker its ifeval (ROLL's "
                      "IFEval checks named by the row's ground_truth func_name, 1 or 0, plus ROLL's repetition "
                      "penalty), "
                      "LLMJudgeRewardWorker its llm_judge (judge_model_type api, inference or cluster), "
                      "RemoteRewardSystemWorker its reward_system (ROLL's HTTP protocol to a reward "
                      "service at reward_system_config's submit_url and get_result_url); DetectionRewardWorker and "
                      "VideoR1RewardWorker are refused (vision-language); a vroll reward_type set beside it wins where it is one of its alternatives "
                      "(math_rule for the math worker); other classes are refused by name",
        "reward_type": "with worker_cls, ROLL's meaning: the worker's own option (only ROLL's crossthinkqa worker "
                       "reads it: loose / soft / strict, vroll's grading there; the others never read it, so it is "
                       "dropped); without worker_cls it is vroll's worker kind (math_rule, math_verify, code_sandbox, "
                       "llm_judge, crossthinkqa, choice_boxed, choice_val, ifeval, format, model, reward_system)",
        "judge_model_type": "api (an OpenAI-compatible endpoint) or inference: the judge model (model_args) on "
                            "vroll's vllm strategy, in engine processes of its own on its device_mapping (asleep at "
                            "level 1 between scorings where its devices are another role's or judge's, as ROLL's judge), each "
                            "judge prompt formatted with the judge model's own chat template (ROLL's data_args."
                            "template names one of its own), all of a step's samples in one generate call; "
                            "cluster: the same, on the top-level reward_model's engine, one for every cluster "
                            "judge, each judge with its own judge_prompt and generating_args, its reply read for a "
                            "'Score: X' first (out of 10 above 1), else yes/no. ROLL at this commit "
                            "refuses cluster when the worker starts (its v0.3.0 removed the worker's cluster mode "
                            "and kept reward_model, its example and its server); vroll gives it the meaning of the "
                            "commit that added them (bd17364f)",
        "judge_prompt": "ROLL's prompt name (its one prompt, in vroll's wording: same placeholders and YES / NO "
                        "contract) or vroll's own template with {question}, {response}, {reference}",
        "judge_api_key": "optional (a local `vllm serve` needs none), else the environment's OPENAI_API_KEY",
        "reward_manager_config": "read by RemoteRewardSystemWorker (vroll's reward_system) only, as in ROLL: sent with "
                                 "each sample as `reward_manager`; a plug-in whose plugin_name holds 'code' sends the "
                                 "row's test cases as its reward_info",
        "tag_included": "ROLL's routing: a row goes to the one worker its domain names (its `domain` field, else the "
                        "worker whose tag_included lists its tag, else the worker named math_rule), and the batch's "
                        "statistics are per domain; vroll adds a sum where a file asks for more than ROLL gives, each "
                        "named by a `# note:` of vroll validate: a tag listed under several workers is scored by each "
                        "and their weighted scores (vroll's `weight`) are summed (ROLL scores it with the last), and a "
                        "worker with no tag_included takes every row without a `domain` field (ROLL only rows whose "
                        "domain names it). A row no worker scores is refused before anything starts (ROLL fails on it "
                        "when it scores it); a training row of a domain domain_interleave_probs does not list is never "
                        "drawn, as in ROLL (config/domains.py)",
    },
    "model_args": {
        "lora_target": "actor_train's turns LoRA on with ROLL's meaning (peft's LoRA on the named Linear layers, "
                       "comma-separated, all-linear or one regular expression; lora_rank, lora_alpha (default 2 x "
                       "rank), lora_dropout, additional_target as in ROLL; only the adapters train). Differences: the "
                       "engine receives the merged weights (base + alpha/rank * B A, under the base model's names) "
                       "through vroll's weight update, where ROLL sends the adapter to vLLM's own LoRA "
                       "(enable_lora), so actor_infer's lora_* keys are not read; each checkpoint's model is the "
                       "merged model (a plain Hugging Face folder) with the adapter in its adapter/ folder (peft's "
                       "format), where ROLL's fsdp2_train saves the adapter; ROLL's rule for the reference holds "
                       "(the trainer's model with its adapters off, no reference role started). Refused: "
                       "all-embedding, all-router, a name that matches no Linear layer of the model (checked "
                       "before anything starts), lm_head of a model whose lm_head is its embedding, the critic's",
    },
    "data_args": {
        "template": "actor_train's: the template of every row unless global_template is set (ROLL's rule; names as "
                    "global_template); validation's must render as that one (vroll refuses a different one, which "
                    "ROLL ignores); other roles' are not read (as in ROLL), each noted",
    },
    "generating_args": {
        "do_sample": "false means greedy: vroll sets temperature 0 (vLLM has no do_sample)",
    },
    "training_args": {
        "lr_scheduler_type": "same names, but ROLL's default is linear (decay to 0) and vroll's is constant: "
                             "set it to keep ROLL's schedule",
    },
    "strategy_name": {
        "fsdp2_infer": "runs as hf_infer: the whole model in vroll's process (no FSDP sharding), its "
                       "strategy_config FSDP options dropped with a note",
    },
}


def _none(v) -> bool:
    return v is None


def _falsy(v) -> bool:
    return not v


# section -> key -> (is the value fine, why it is refused otherwise and what to do)
UNSUPPORTED: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "": {
        "use_opd": (_falsy, "on-policy distillation is not in vroll"),
        "is_pure_opd": (_falsy, "on-policy distillation is not in vroll"),
        "dataset_filter": (lambda v: not isinstance(v, dict) or all(x is None for x in v.values()),
                           "vroll does not filter the dataset by difficulty"),
        "user_defined_rollout_loop_cls": (
            lambda v: v == "roll.distributed.scheduler.user_defined_rollout_loop.UserDefinedRolloutLoop",
            "a ROLL class cannot run in vroll; remove it to use vroll's rollout loop"),
    },
    "role": {
        "apply_loss_scale": (lambda v: v is True, "vroll's loss is always over the whole global batch (ROLL's "
                                                  "default true)"),
    },
    "model_args": {
        "model_config_kwargs": (_falsy, "vroll loads the model's config as it is"),
        "freeze_module_prefix": (_none, "vroll trains every weight (no frozen modules)"),
    },
    "training_args": {
        "warmup_ratio": (_falsy, "use warmup_steps (vroll's warm-up is a number of optimiser steps)"),
    },
    "generating_args": {
        "include_stop_str_in_output": (_falsy, "vroll's responses end before the stop string (vLLM's default)"),
    },
}

ROLL_DEFAULT_WORKER = "roll.pipeline.rlvr.rewards."
# ROLL's reward worker classes (by class name) -> vroll's reward_type, or None where vroll has none yet
REWARD_WORKERS = {
    "MathRuleRewardWorker": "math_verify",
    "CodeSandboxRewardWorker": "code_sandbox",
    "LLMJudgeRewardWorker": "llm_judge",
    "GeneralRuleRewardWorker": "ifeval",
    "CrossThinkQARuleRewardWorker": "crossthinkqa",
    "MultipleChoiceBoxedRuleRewardWorker": "choice_boxed",
    "GeneralValRuleRewardWorker": "choice_val",
    "DetectionRewardWorker": None,
    "VideoR1RewardWorker": None,
    "RemoteRewardSystemWorker": "reward_system",
}
VISION_LANGUAGE = ("scores vision-language rows (run by ROLL's start_rlvr_vl_pipeline.py), which vroll does not "
                   "train: vroll's models, data rows and reward workers are text only")
# why a ROLL worker vroll refuses is not in vroll (by class name)
REFUSED_WORKERS = {
    "DetectionRewardWorker": "ROLL's DetectionRewardWorker (object detection: the boxes in the response against "
                             "the row's reward_model ground truth, on the image's grid, with COCO's metrics) "
                             + VISION_LANGUAGE,
    "VideoR1RewardWorker": "ROLL's VideoR1RewardWorker (answers about a video) " + VISION_LANGUAGE,
}
VROLL_REWARD_TYPES = ("math_rule", "math_verify", "code_sandbox", "llm_judge", "crossthinkqa", "choice_boxed",
                      "choice_val", "ifeval", "format", "model", "reward_system")
# ROLL's judge prompt names (roll/utils/prompt.py); vroll's wording of each is in rewards/llm_judge.py
ROLL_JUDGE_PROMPTS = ("Qwen2.5-7B-Instruct-RLVR-prompt",)
# a vroll reward_type that may stand in for a ROLL worker when set beside its worker_cls
REWARD_ALTERNATIVES = {"math_verify": ("math_rule",)}


def adopt_roll_keys(raw: dict[str, Any]) -> tuple[dict[str, str], list[Issue]]:
    """Rewrite ROLL's keys in `raw` (in place) into vroll's: (notes path -> what was done, refusals)."""
    notes: dict[str, str] = {}
    issues = _refusals(raw)
    _lengths(raw, notes, issues)
    _engine_defaults(raw, notes)
    _renamed_engine_args(raw, notes, issues)
    _trainer_keys(raw, notes, issues)
    _generating(raw, notes)
    _rewards(raw, notes, issues)
    _judge_server(raw, notes, issues)
    _fsdp2_infer(raw, notes)
    _unread_templates(raw, notes)
    _lora(raw, notes)
    return notes, issues


def _roles(raw) -> dict[str, dict]:
    out = {k: raw[k] for k in ROLES if isinstance(raw.get(k), dict)}
    rewards = raw.get("rewards")
    if isinstance(rewards, dict):
        out.update({f"rewards.{k}": v for k, v in rewards.items() if isinstance(v, dict)})
    return out


def _refusals(raw) -> list[Issue]:
    issues = []
    scopes = [("", raw, "")] + [(f"{p}.", r, "role") for p, r in _roles(raw).items()]
    scopes += [(f"{p}.{s}.", r[s], s) for p, r in _roles(raw).items() for s in ("model_args", "training_args",
                                                                                  "generating_args")
               if isinstance(r.get(s), dict)]
    if isinstance(raw.get("validation"), dict) and isinstance(raw["validation"].get("generating_args"), dict):
        scopes.append(("validation.generating_args.", raw["validation"]["generating_args"], "generating_args"))
    for prefix, mapping, section in scopes:
        for key, (fine, why) in UNSUPPORTED.get(section, {}).items():
            if key in mapping:
                if not fine(mapping[key]):
                    issues.append(Issue(prefix + key, f"{mapping[key]!r} is not supported: {why}"))
                del mapping[key]  # ROLL's neutral value: nothing to do
    return issues


def _lengths(raw, notes, issues) -> None:
    prompt = raw.get("prompt_length", 1024)
    seq = raw.pop("sequence_length", None)
    if seq is not None:
        if isinstance(seq, int) and isinstance(prompt, int) and seq > prompt:
            raw["response_length"] = seq - prompt
            notes["sequence_length"] = f"response_length = {seq} - prompt_length {prompt} = {seq - prompt}"
        else:
            issues.append(Issue("sequence_length", f"{seq!r} must be a whole number above prompt_length ({prompt!r})"))
    val_prompt, val_seq = raw.pop("val_prompt_length", None), raw.pop("val_sequence_length", None)
    if (val_prompt is None) != (val_seq is None):
        issues.append(Issue("val_sequence_length", "val_prompt_length and val_sequence_length go together (as in "
                                                   "ROLL): set both or neither"))
    elif val_seq is not None:
        if not (isinstance(val_seq, int) and isinstance(val_prompt, int) and val_seq > val_prompt):
            issues.append(Issue("val_sequence_length", f"{val_seq!r} must be a whole number above val_prompt_length"))
        elif isinstance(raw.get("validation"), dict):
            raw["validation"].setdefault("generating_args", {})["max_new_tokens"] = val_seq - val_prompt
            notes["val_sequence_length"] = f"validation.generating_args.max_new_tokens = {val_seq - val_prompt}"


def _engine_defaults(raw, notes) -> None:
    for key, option, scale in (("rpc_timeout", "engine_call_timeout_s", 1),
                               ("model_update_buffer_size_mb", "weight_update_bucket_bytes", 1 << 20)):
        value = raw.pop(key, None)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            notes[key] = f"{value!r} is not a positive number: ignored"
            continue
        targets = []
        for path, role in _roles(raw).items():
            strategy = role.get("strategy_args")
            if isinstance(strategy, dict) and strategy.get("strategy_name") == "vllm":
                config = strategy.get("strategy_config")
                config = strategy["strategy_config"] = config if isinstance(config, dict) else {}
                if option not in config:
                    config[option] = value * scale
                    targets.append(f"{path}.strategy_args.strategy_config.{option}")
        notes[key] = f"sets {', '.join(targets)} = {value * scale}" if targets else "no vllm role to apply it to"


def _renamed_engine_args(raw, notes, issues) -> None:
    """Each vllm role's engine arguments an older vLLM named otherwise, under the installed vLLM's names."""
    for path, role in _roles(raw).items():
        strategy = role.get("strategy_args")
        if isinstance(strategy, dict) and strategy.get("strategy_name") == "vllm" \
                and isinstance(strategy.get("strategy_config"), dict):
            found, refused = adopt_renamed_args(strategy["strategy_config"], f"{path}.strategy_args.strategy_config")
            notes.update(found)
            issues += refused


def _trainer_keys(raw, notes, issues) -> None:
    norm = raw.pop("max_grad_norm", None)
    if norm is not None:
        set_on = []
        for role in ("actor_train", "critic"):
            if isinstance(raw.get(role), dict):
                args = raw[role].setdefault("training_args", {})
                if isinstance(args, dict) and "max_grad_norm" not in args:
                    args["max_grad_norm"] = norm
                    set_on.append(f"{role}.training_args.max_grad_norm")
        notes["max_grad_norm"] = f"sets {', '.join(set_on) or 'nothing (set in each trainer)'}"
    train = raw.get("actor_train")
    if not isinstance(train, dict):
        return
    pg_worker = str(train.get("worker_cls") or "").endswith("ActorPGWorker")  # the worker that reads them
    for key in ("pg_variant", "topr_positive_weight", "topr_negative_weight"):
        if key not in train:
            continue
        value = train.pop(key)
        if value is None:
            continue
        if not pg_worker:
            notes[f"actor_train.{key}"] = "ignored, as in ROLL: only worker_cls ActorPGWorker reads it"
            continue
        if key in raw and raw[key] != value:
            issues.append(Issue(f"actor_train.{key}", f"{value!r} differs from the top-level {key}={raw[key]!r}; "
                                                      "vroll has one (the top-level): keep one"))
        else:
            raw[key] = value
            notes[f"actor_train.{key}"] = f"top-level {key} = {value!r}"
    for path, role in _roles(raw).items():  # other roles' copies mean nothing in ROLL either
        for key in ("pg_variant", "topr_positive_weight", "topr_negative_weight"):
            role.pop(key, None)


def _generating(raw, notes) -> None:
    sections = {f"{p}.generating_args": r.get("generating_args") for p, r in _roles(raw).items()}
    if isinstance(raw.get("validation"), dict):
        sections["validation.generating_args"] = raw["validation"].get("generating_args")
    for path, g in sections.items():
        if isinstance(g, dict) and "do_sample" in g:
            if g.pop("do_sample") is False:
                g["temperature"] = 0.0
                notes[f"{path}.do_sample"] = "false: temperature = 0 (greedy)"


def _drop_domain(raw, name: str, notes) -> None:
    """A removed worker's domain leaves actor_train's domain_interleave_probs with it (its share then
    goes to the last domain, ROLL's rule; config/domains.py warns)."""
    data = (raw.get("actor_train") or {}).get("data_args") if isinstance(raw.get("actor_train"), dict) else None
    probs = data.get("domain_interleave_probs") if isinstance(data, dict) else None
    if isinstance(probs, dict) and name in probs:
        del probs[name]
        notes[f"actor_train.data_args.domain_interleave_probs.{name}"] = "removed with its reward worker"


def _judge_on_vllm(worker: dict, path: str, notes) -> None:
    """ROLL's judge examples generate on hf_infer; vroll's hf_infer scores and does not generate, so the
    judge model runs on vllm (its hf_infer strategy_config, if any, is dropped)."""
    strategy = worker.get("strategy_args")
    if worker.get("judge_model_type") == "inference" and isinstance(strategy, dict) \
            and strategy.get("strategy_name") == "hf_infer":
        strategy["strategy_name"], strategy["strategy_config"] = "vllm", {}
        notes[f"{path}.strategy_args.strategy_name"] = "hf_infer: the judge generates on vllm (vroll's hf_infer " \
                                                       "scores, it does not generate)"


def _rewards(raw, notes, issues) -> None:
    rewards = raw.get("rewards")
    if not isinstance(rewards, dict):
        return
    for name in [n for n, w in rewards.items() if w is None]:  # `rewards.<name>=null` removes a worker
        del rewards[name]
        notes[f"rewards.{name}"] = "null: worker removed"
        _drop_domain(raw, name, notes)
    for name, worker in rewards.items():
        if not isinstance(worker, dict) or worker.get("worker_cls") is None:
            continue
        path, cls = f"rewards.{name}", worker.pop("worker_cls")
        short = str(cls).rsplit(".", 1)[-1]
        if short not in REWARD_WORKERS:
            issues.append(Issue(f"{path}.worker_cls", f"{cls!r} is not one of ROLL's RLVR reward workers "
                                                      f"({', '.join(REWARD_WORKERS)})"))
            continue
        kind = REWARD_WORKERS[short]
        if kind == "llm_judge" and worker.get("judge_model_type") not in ("api", "inference", "cluster"):
            issues.append(Issue(f"{path}.worker_cls", f"ROLL's {short} with judge_model_type "
                                f"{worker.get('judge_model_type')!r} is not one of ROLL's (api, inference, "
                                "cluster): api with judge_api_url (an OpenAI-compatible server, e.g. `vllm serve "
                                "MODEL`), inference (the worker's judge model on vroll's vllm strategy) or cluster "
                                "(the top-level reward_model's engine)"))
            worker.pop("reward_type", None)
            continue
        if kind == "llm_judge":
            _judge_on_vllm(worker, path, notes)
        if kind is None:
            why = f"{REFUSED_WORKERS[short]}; it is not in vroll" if short in REFUSED_WORKERS else \
                f"ROLL's {short} is not in vroll yet"
            issues.append(Issue(f"{path}.worker_cls", f"{why}; remove the worker (`{path}=null`: its tags then get no "
                                                      "reward) or route its tags to a vroll worker"))
            worker.pop("reward_type", None)
            continue
        rtype = worker.pop("reward_type", None)
        if kind == "crossthinkqa":  # the one ROLL worker that reads its reward_type
            if rtype not in ("loose", "soft", "strict"):
                issues.append(Issue(f"{path}.reward_type", f"{rtype!r}: ROLL's {short} needs reward_type loose, soft "
                                                           "or strict (ROLL fails without one)"))
                continue
            worker["reward_type"], worker["grading"] = kind, rtype
            notes[f"{path}.worker_cls"] = f"{short}: vroll's {kind}, ROLL's reward_type {rtype!r} as its grading"
            continue
        if rtype in REWARD_ALTERNATIVES.get(kind, ()):
            kind, why = rtype, f" (reward_type {rtype!r} chosen instead)"
        elif rtype in VROLL_REWARD_TYPES and rtype != kind:
            issues.append(Issue(f"{path}.reward_type", f"{rtype!r} contradicts worker_cls {short} (vroll's {kind}"
                                                       + "".join(f", or {a}" for a in REWARD_ALTERNATIVES.get(kind, ()))
                                                       + ")"))
            continue
        else:
            why = f" (ROLL's reward_type {rtype!r} is that worker's own option, which it never reads)" \
                if rtype is not None and rtype != kind else ""
        worker["reward_type"] = kind
        notes[f"{path}.worker_cls"] = f"{short}: vroll's {kind}{why}"


def _judge_server(raw, notes, issues) -> None:
    """ROLL's `reward_model` (the shared judge server of `judge_model_type: cluster` judges): kept for
    vroll's launcher when a cluster judge asks it; otherwise not started (ROLL starts it, and nothing
    asks it), with a note. Its hf_infer generates on vllm, as a judge's does; its generating_args are
    not read (each judge sends its own, as ROLL's cluster judge did)."""
    rewards = raw.get("rewards") if isinstance(raw.get("rewards"), dict) else {}
    judges = [n for n, w in rewards.items() if isinstance(w, dict) and w.get("judge_model_type") == "cluster"]
    server = raw.get("reward_model")
    if server is None:
        raw.pop("reward_model", None)
        for name in judges:
            issues.append(Issue(f"rewards.{name}.judge_model_type", "'cluster' asks the judge model of the top-level "
                                "reward_model section (ROLL's shared judge server), which the file does not have: add "
                                "reward_model (model_args, strategy_args vllm, device_mapping), or use judge_model_type "
                                "inference (the worker's own model on vllm) or api (an endpoint)"))
        return
    if not judges:
        del raw["reward_model"]
        notes["reward_model"] = ("not started: no judge_model_type: cluster worker asks it (ROLL starts it even so, "
                                 "and nothing asks it)")
        return
    if isinstance(server, dict):
        strategy = server.get("strategy_args")
        if isinstance(strategy, dict) and strategy.get("strategy_name") == "hf_infer":
            strategy["strategy_name"], strategy["strategy_config"] = "vllm", {}
            notes["reward_model.strategy_args.strategy_name"] = "hf_infer: the judge generates on vllm (vroll's " \
                                                                "hf_infer scores, it does not generate)"
        if server.pop("generating_args", None) is not None:
            notes["reward_model.generating_args"] = ("not read: each cluster judge generates with its own "
                                                     "generating_args, as ROLL's cluster judge sends them")
    notes["reward_model"] = (f"the judge engine of {', '.join(f'rewards.{n}' for n in judges)} (judge_model_type: "
                             "cluster): one vllm engine on its device_mapping, shared by those judges")


def _fsdp2_infer(raw, notes) -> None:
    for path, role in _roles(raw).items():
        strategy = role.get("strategy_args")
        if isinstance(strategy, dict) and strategy.get("strategy_name") == "fsdp2_infer":
            strategy["strategy_name"] = "hf_infer"
            dropped = sorted(strategy.pop("strategy_config", None) or {})
            notes[f"{path}.strategy_args.strategy_name"] = (
                "fsdp2_infer: runs as hf_infer (the whole model in vroll's process, no FSDP)" +
                (f"; dropped its FSDP options {', '.join(dropped)}" if dropped else ""))


def _unread_templates(raw, notes) -> None:
    """Only actor_train's and validation's data_args.template are read (config/templates.py); the
    other roles' copies, which ROLL does not read either, are removed with a note."""
    for path, role in _roles(raw).items():
        data = role.get("data_args")
        if path != "actor_train" and isinstance(data, dict) and data.get("template") is not None:
            judge = path == "reward_model" or role.get("judge_model_type") in ("inference", "cluster")
            notes[f"{path}.data_args.template"] = f"{data.pop('template')!r} not read: " + (
                "the judge's prompts are formatted with the judge model's own chat template (ROLL names one of its "
                "templates)" if judge else "rows are formatted with global_template / actor_train.data_args.template, "
                                           "as in ROLL")


LORA_KEYS = ("lora_target", "lora_rank", "lora_alpha", "lora_dropout", "additional_target")


def _lora(raw, notes) -> None:
    """Only actor_train's LoRA keys are read (ROLL's vLLM reads actor_infer's, for its own LoRA; vroll's
    engine gets the merged weights instead): the other roles' are removed with a note (the critic's
    stay, for `config.lora.lora_issues` to refuse). Under LoRA the reference role is not started
    (ROLL's rule): the trainer's model with its adapters off is the reference."""
    train = raw.get("actor_train")
    args = train.get("model_args") if isinstance(train, dict) else None
    on = isinstance(args, dict) and args.get("lora_target") is not None
    for path, role in _roles(raw).items():
        model_args = role.get("model_args")
        if path in ("actor_train", "critic") or not isinstance(model_args, dict):
            continue
        found = [k for k in LORA_KEYS if k in model_args]
        if any(model_args.get(k) is not None for k in found) and model_args.get("lora_target") is not None:
            why = ("the engine receives actor_train's merged weights (ROLL's vLLM loads the adapter with its own "
                   "LoRA)") if path == "actor_infer" else "a role that does not train has no adapter (as in ROLL)"
            notes[f"{path}.model_args.lora_target"] = f"not read: {why}"
        for key in found:
            del model_args[key]
    if on:
        notes["actor_train.model_args.lora_target"] = (
            f"LoRA on {args['lora_target']!r} (peft): only the adapters train; the engine receives the merged "
            "weights; checkpoints hold the merged model and the adapter in adapter/")
    if on and isinstance(raw.get("reference"), dict):
        del raw["reference"]
        notes["reference"] = ("not started under LoRA (ROLL's rule): the reference log-probs are actor_train's "
                              "model with its adapters off")

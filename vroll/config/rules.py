"""Cross-field rules, checked after the types: impossible combinations and platform limits."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from vroll.config.errors import Issue, UserError
from vroll.config.schema import GeneratingArgs, PipelineConfig, RoleConfig
from vroll.config.domains import check_domain_probs
from vroll.config.engine_args import check_engine_args
from vroll.config.lora import lora_enabled, lora_issues
from vroll.config.layout import (SLOTS_VAR, colocated, devices_per_engine, local_slots, rollout_rows,
                                 rows_per_optimizer_step, shared_cores_note, trainer_ranks)
from vroll.config.numbers import nonfinite_issues
from vroll.config.options import parse_options
from vroll.config.passes import critic_enabled, reference_enabled, reference_reason
from vroll.config.roll_compat import ROLL_JUDGE_PROMPTS
from vroll.config.sampling import greedy_issues, job_sampling
from vroll.config.strategies import STRATEGIES, not_available, role_need, vroll_strategy
from vroll.config.suggest import closest
from vroll.config.trackers import check_tracking, tracker_package_issues
from vroll.config.templates import template_issues


def check_config(cfg: PipelineConfig, platform: str | None = None) -> list[Issue]:
    """Every rule over the whole file. `platform` ("cpu", "cuda") adds what that platform cannot run."""
    issues: list[Issue] = []
    for path, role in cfg.roles().items():
        issues += check_role(path, role, platform)
        if platform == "cpu" and not cfg.ray_address:
            issues += [i for i in check_local_cpu_slots(path, role) if i not in issues]  # a bad VROLL_CPU_SLOTS once
    if cfg.validation is not None:
        issues += check_generating_args("validation.generating_args", cfg.validation.generating_args)
    if cfg.actor_train is not None and cfg.actor_train.data_args is not None:
        issues += check_domain_probs(cfg.actor_train.data_args.domain_interleave_probs, cfg.rewards,
                                     cfg.rollout_batch_size)
    issues += check_tracking(cfg)
    issues += check_judge_server(cfg)
    issues += check_system_envs("system_envs", cfg.system_envs)
    issues += template_issues(cfg)
    issues += lora_issues(cfg)
    return issues + [i for req in job_sampling(cfg) for i in greedy_issues(req)]


def check_role(path: str, role: RoleConfig, platform: str | None) -> list[Issue]:
    issues: list[Issue] = []
    need = role_need(path)
    reward_rule = path.startswith("rewards.") and getattr(role, "reward_type", "model") != "model"
    if path.startswith("rewards.") and getattr(role, "reward_type", None) == "format":
        issues += check_format_pattern(path, role.pattern)
    if path.startswith("rewards.") and getattr(role, "reward_type", None) == "llm_judge":
        issues += check_judge(path, role)
    if path.startswith("rewards.") and getattr(role, "reward_type", None) == "reward_system":
        issues += check_reward_system(path, role)
    if role.strategy_args is None:
        if not reward_rule:
            issues.append(Issue(f"{path}.strategy_args.strategy_name", "is required (e.g. vllm, hf_infer)"))
    else:
        issues += check_strategy(path, role, need, platform)
        reported = {i.path for i in issues}  # a range check may have named the value already
        where = f"{path}.strategy_args.strategy_config"
        issues += [i for i in nonfinite_issues(role.strategy_args.strategy_config, where) if i.path not in reported]
    if not role.model_args.model_name_or_path and not reward_rule:
        issues.append(Issue(f"{path}.model_args.model_name_or_path",
                            "is not set, and there is no top-level `pretrain` to default to"))
    issues += check_device_mapping(path, role)
    issues += check_system_envs(f"{path}.system_envs", role.system_envs, pinned=True)
    issues += check_generating_args(f"{path}.generating_args", role.generating_args)
    return issues


# set by vroll in each actor from device_mapping; a role's system_envs may not move it
PINNED_ENV = ("CUDA_VISIBLE_DEVICES",)


def check_system_envs(path: str, envs: dict, pinned: bool = False) -> list[Issue]:
    """Environment values are strings, numbers or booleans (written as text); a role's own
    (`pinned`) may not set what vroll sets per actor."""
    issues = [Issue(f"{path}.{k}", f"{v!r}: an environment value is a string, a number or a boolean")
              for k, v in envs.items() if v is None or isinstance(v, (dict, list))]
    if pinned:
        issues += [Issue(f"{path}.{k}", f"{envs[k]!r}: vroll sets it in each of the role's actors from device_mapping; "
                                        "choose the role's devices there") for k in PINNED_ENV if k in envs]
    return issues


def check_judge(path: str, role) -> list[Issue]:
    """An LLM judge needs an endpoint (judge_model_type: api) or its model on vroll's vllm strategy
    (inference), and a known prompt."""
    issues = []
    if role.judge_model_type == "inference":
        name = role.strategy_args.strategy_name if role.strategy_args else None
        if name != "vllm":
            issues.append(Issue(f"{path}.strategy_args.strategy_name", f"{name!r}: judge_model_type: inference serves "
                                "the judge model on vroll's vllm strategy (as ROLL's judge examples do); set vllm"))
        if not role.model_args.model_name_or_path:
            issues.append(Issue(f"{path}.model_args.model_name_or_path", "is required with judge_model_type: "
                                                                         "inference: the judge model's folder"))
    elif role.judge_model_type == "cluster":
        pass  # the top-level reward_model serves it (check_judge_server)
    elif role.judge_model_type != "api":
        issues.append(Issue(f"{path}.judge_model_type", f"{role.judge_model_type!r}: a judge runs `api` (an "
                            "OpenAI-compatible endpoint: judge_api_url, e.g. `vllm serve MODEL`), `inference` (the "
                            "judge model on vroll's vllm strategy: model_args, strategy_args, device_mapping) or "
                            "`cluster` (the top-level reward_model's engine, shared by such judges)"))
    elif not role.judge_api_url:
        issues.append(Issue(f"{path}.judge_api_url", "is required with judge_model_type: api (e.g. "
                                                     "http://localhost:8000/v1)"))
    prompt = role.judge_prompt
    if prompt is not None and prompt not in ROLL_JUDGE_PROMPTS and "{response}" not in prompt:
        issues.append(Issue(f"{path}.judge_prompt", f"{prompt!r} is neither one of ROLL's prompt names "
                            f"({', '.join(ROLL_JUDGE_PROMPTS)}) nor a template with {{question}}, {{response}} "
                            "and {reference}"))
    return issues


def check_judge_server(cfg: PipelineConfig) -> list[Issue]:
    """The top-level reward_model, which `judge_model_type: cluster` judges ask: there, on vllm, with a
    model (the loader removes it when no such judge asks it)."""
    judges = [n for n, w in cfg.rewards.items() if w.reward_type == "llm_judge" and w.judge_model_type == "cluster"]
    if not judges:
        return []
    server = cfg.reward_model
    if server is None:
        return [Issue(f"rewards.{judges[0]}.judge_model_type", "'cluster' asks the judge model of the top-level "
                                                               "reward_model section, which the file does not have")]
    name = server.strategy_args.strategy_name if server.strategy_args else None
    if name in STRATEGIES and STRATEGIES[name].implemented and name != "vllm":  # (others are named elsewhere)
        return [Issue("reward_model.strategy_args.strategy_name", f"{name!r}: the judge server of judge_model_type: "
                                                                  "cluster runs on vroll's vllm strategy; set vllm")]
    return []


def check_reward_system(path: str, role) -> list[Issue]:
    """ROLL's remote reward system needs the service's two addresses (ROLL's own defaults are an
    internal service of its authors')."""
    sc = role.reward_system_config
    missing = [k for k in ("submit_url", "get_result_url") if sc is None or not getattr(sc, k)]
    return [Issue(f"{path}.reward_system_config.{k}", "is required with ROLL's RemoteRewardSystemWorker (reward_type "
                                                      "reward_system): the reward service's address (ROLL calls its "
                                                      "authors' internal service, which vroll does not)")
            for k in missing]


def check_format_pattern(path: str, pattern: str | None) -> list[Issue]:
    if not pattern:
        return [Issue(f"{path}.pattern", "is required for reward_type: format (a regular expression the whole "
                                         "response must match, e.g. '<answer>-?\\d+</answer>')")]
    try:
        re.compile(pattern)
    except re.error as e:
        return [Issue(f"{path}.pattern", f"{pattern!r} is not a valid regular expression: {e}")]
    return []


def check_strategy(path: str, role: RoleConfig, need: str, platform: str | None) -> list[Issue]:
    name = role.strategy_args.strategy_name
    where = f"{path}.strategy_args"
    info = STRATEGIES.get(name)
    if info is None:
        return [Issue(f"{where}.strategy_name",
                      f"unknown strategy {name!r}{closest(name, STRATEGIES)}; known: {', '.join(STRATEGIES)}")]
    if need not in info.kinds:
        fits = [n for n, i in STRATEGIES.items() if need in i.kinds]
        return [Issue(f"{where}.strategy_name",
                      f"{name!r} cannot serve this role (it needs a '{need}' strategy: {', '.join(fits)})")]
    issues = parse_options(name, role.strategy_args.strategy_config, f"{where}.strategy_config")[1]
    if name == "fsdp2_train":
        issues += check_trainer_slots(path, role)
    if name != "vllm":
        return issues  # other strategies' configs pass through untouched

    return issues + check_engine_args(role.strategy_args.strategy_config, f"{where}.strategy_config", platform)


def capped_response_warnings(cfg: PipelineConfig) -> list[str]:
    """A warning for each vllm role whose max_new_tokens reaches its max_model_len: vLLM (0.32 read) does
    not refuse such a request, it ends each response when prompt + response reach max_model_len, so
    every response is cut there (ROLL's files with 8192 new tokens in 8000 run so in ROLL too)."""
    out = []
    for path, role in cfg.roles().items():
        if role.strategy_args is None or role.strategy_args.strategy_name != "vllm":
            continue
        max_len = role.strategy_args.strategy_config.get("max_model_len")
        new = role.generating_args.max_new_tokens
        if isinstance(max_len, int) and new >= max_len:
            out.append(f"{path}.generating_args.max_new_tokens: {new} reaches {path}.strategy_args.strategy_config."
                       f"max_model_len {max_len}: vLLM ends each response when prompt + response reach "
                       f"{max_len} tokens (finish reason length), so a response gets at most {max_len} minus its "
                       f"prompt's tokens ({max_len - min(cfg.prompt_length, max_len - 1)} after a prompt of "
                       f"prompt_length {cfg.prompt_length}), never {new}; lower max_new_tokens or raise "
                       "max_model_len to remove the cap")
    return out


def check_device_mapping(path: str, role: RoleConfig) -> list[Issue]:
    ids = role.device_mapping
    where = f"{path}.device_mapping"
    if not ids:
        return [Issue(where, "is empty: a role needs at least one device")]
    issues = []
    dups = sorted(d for d, c in Counter(ids).items() if c > 1)
    if dups:
        issues.append(Issue(where, f"{ids} names devices {dups} more than once; each id may appear once per role"))
    if any(d < 0 for d in ids):
        issues.append(Issue(where, f"{ids} has negative device ids; ids start at 0"))
    if role.strategy_args and role.strategy_args.strategy_name == "vllm":
        try:
            per_engine = devices_per_engine(role.strategy_args.strategy_config)
        except (TypeError, ValueError):
            per_engine = 1  # the bad value itself is reported by the strategy_config check
        if per_engine >= 1 and len(ids) % per_engine:
            issues.append(Issue(where, f"{len(ids)} devices cannot be split into engines of {per_engine} "
                                       "(tensor_parallel_size x pipeline_parallel_size): use a multiple"))
    return issues


def check_local_cpu_slots(path: str, role: RoleConfig) -> list[Issue]:
    """On the CPU backend device ids name this machine's cores (when no cluster is joined)."""
    try:
        slots = local_slots()
    except UserError as e:
        return [Issue("", str(e))]
    beyond = sorted({d for d in role.device_mapping if d >= slots})
    if not beyond:
        return []
    return [Issue(f"{path}.device_mapping", f"devices {beyond} do not exist: on the CPU backend device ids name "
                                            f"CPU slots, and this machine has {slots} (0-{slots - 1}); set "
                                            "ray_address to run on a larger cluster, or declare more slots "
                                            f"on these cores to try the layout ({SLOTS_VAR}=N: slots then share "
                                            "cores)")]


def shared_slot_warnings(cfg: PipelineConfig, platform: str | None) -> list[str]:
    """A warning when VROLL_CPU_SLOTS declares more CPU slots than this machine has cores (on the CPU
    backend without a cluster: the slots the file's device ids name share cores)."""
    if platform != "cpu" or cfg.ray_address:
        return []
    try:
        note = shared_cores_note()
    except UserError:
        return []  # reported by check_local_cpu_slots
    return [note] if note else []


def check_generating_args(path: str, g: GeneratingArgs) -> list[Issue]:
    issues = []
    if g.min_new_tokens > g.max_new_tokens:
        issues.append(Issue(f"{path}.min_new_tokens", f"{g.min_new_tokens} is more than max_new_tokens={g.max_new_tokens}"))
    if g.num_beams > 1:
        if g.num_return_sequences > g.num_beams:
            issues.append(Issue(f"{path}.num_return_sequences",
                                f"{g.num_return_sequences} is more than num_beams={g.num_beams}: beam search "
                                "returns at most num_beams sequences"))
        ignored = {"top_p": (g.top_p, 1.0), "repetition_penalty": (g.repetition_penalty, 1.0),
                   "stop_strings": (g.stop_strings, []), "min_new_tokens": (g.min_new_tokens, 0)}
        for key, (value, neutral) in ignored.items():
            if value != neutral:
                issues.append(Issue(f"{path}.{key}", f"{value!r} is not supported with beam search "
                                                     f"(num_beams={g.num_beams}); use {neutral!r} or num_beams: 1"))
        if g.top_k not in (-1, 0):
            issues.append(Issue(f"{path}.top_k", f"{g.top_k!r} is not supported with beam search "
                                                 f"(num_beams={g.num_beams}); use -1 or num_beams: 1"))
    return issues


def check_runnable(cfg: PipelineConfig) -> list[Issue]:
    """Every role whose strategy vroll knows but cannot run (Megatron, DeepSpeed, SGLang), each with the
    override that runs it on vroll's. `load_config` leaves this to the commands, so a file whose other
    roles vroll cannot run still serves `vroll generate` with the one it can."""
    issues = []
    for path, role in cfg.roles().items():
        name = role.strategy_args.strategy_name if role.strategy_args else None
        if vroll_strategy(path, name):
            issues.append(Issue(f"{path}.strategy_args.strategy_name", not_available(path, name)))
    return issues


def check_train_config(cfg: PipelineConfig, job: str = "train", platform: str = "cpu") -> list[Issue]:
    """What `vroll train` (or `vroll sft`) needs on top of valid roles: the roles themselves, every role's
    strategy runnable (`check_runnable`), data files that exist, and batch sizes that divide over the
    trainer's ranks on `platform`."""
    issues: list[Issue] = check_runnable(cfg)
    needed = ("actor_train",) if job == "sft" else ("actor_infer", "actor_train")
    for key in needed:
        if getattr(cfg, key) is None:
            issues.append(Issue(key, f"is required by `vroll {job}`"))
    train = cfg.actor_train
    if train is not None:
        name = train.strategy_args.strategy_name if train.strategy_args else None
        if name != "fsdp2_train" and not vroll_strategy("actor_train", name):
            issues.append(Issue("actor_train.strategy_args.strategy_name",
                                f"{name!r}: `vroll {job}` trains with 'fsdp2_train'"))
        issues += check_data_files("actor_train.data_args", train.data_args)
        if train.training_args is None:
            issues.append(Issue("actor_train.training_args", "is required (learning_rate, batch sizes, ...)"))
    issues += check_output_dir(cfg.output_dir)
    if isinstance(cfg.tracker_kwargs.get("log_dir"), str) and cfg.track_with:
        issues += check_output_dir(cfg.tracker_kwargs["log_dir"], "tracker_kwargs.log_dir")
    issues += tracker_package_issues(cfg)
    if job == "train":
        issues += check_rl_sizes(cfg, platform)
    if cfg.validation is not None and cfg.validation.data_args is not None:
        issues += check_data_files("validation.data_args", cfg.validation.data_args)
    return issues


def check_output_dir(output_dir: str, key: str = "output_dir") -> list[Issue]:
    """A folder vroll writes (`key`) must be one, or one that can be made: no file in its place or on its
    path."""
    path = Path(output_dir).expanduser()
    for p in (path, *path.parents):
        if p.is_dir():
            return []
        if p.exists():
            why = "is a file, not a folder" if p == path else f"cannot be created: {str(p)!r} is a file"
            return [Issue(key, f"{output_dir!r} {why}; choose a folder this user can write to")]
    return []


def check_trainer_slots(path: str, train: RoleConfig) -> list[Issue]:
    """`cpu_threads_per_rank` must divide the role's CPU slots (its type is checked with the options)."""
    per_rank = train.strategy_args.strategy_config.get("cpu_threads_per_rank")
    slots = len(train.device_mapping)
    if isinstance(per_rank, int) and not isinstance(per_rank, bool) and per_rank >= 1 and slots % per_rank:
        return [Issue(f"{path}.strategy_args.strategy_config.cpu_threads_per_rank",
                      f"{per_rank!r}: must divide the role's {slots} CPU slots")]
    return []


def check_rl_sizes(cfg: PipelineConfig, platform: str = "cpu") -> list[Issue]:
    issues = []
    infer = cfg.actor_infer.strategy_args.strategy_name if cfg.actor_infer and cfg.actor_infer.strategy_args else None
    if cfg.actor_infer is not None and infer != "vllm" and not vroll_strategy("actor_infer", infer):
        issues.append(Issue("actor_infer.strategy_args.strategy_name", "`vroll train` generates with 'vllm'"))
    issues += check_rewards_present(cfg)
    if cfg.actor_infer is not None:
        issues += greedy_issues(job_sampling(cfg, "train")[0])
    if cfg.reference is None and reference_enabled(cfg) and not lora_enabled(cfg):  # LoRA: the trainer's base
        key, _, value = reference_reason(cfg).partition(": ")
        default = key == "init_kl_coef" and key not in cfg.model_fields_set
        issues.append(Issue(key, f"{value} needs a `reference` role to compute the KL against" +
                            (" (ROLL's default; set init_kl_coef: 0 to run without a reference)" if default else "")))
    issues += check_critic(cfg, platform)
    issues += check_async(cfg)
    if cfg.tis_clip is not None and cfg.train_infer_correction.is_weight.enabled:
        issues.append(Issue("tis_clip", f"{cfg.tis_clip} is the short form of train_infer_correction.is_weight, "
                                        "which is set too; keep one"))
    if cfg.adv_estimator == "grpo" and cfg.num_return_sequences_in_group < 2:
        issues.append(Issue("num_return_sequences_in_group", f"{cfg.num_return_sequences_in_group}: grpo normalises "
                                                             "within each prompt's group, which needs at least 2"))
    args = cfg.actor_train.training_args if cfg.actor_train else None
    if args is not None:
        train = cfg.actor_train
        sound = train.strategy_args is not None and train.strategy_args.strategy_name == "fsdp2_train" \
            and not check_strategy("actor_train", train, "train", None)  # else reported already; count one rank
        ranks = trainer_ranks(train, platform) if sound else 1
        rows, per_step = rollout_rows(cfg), rows_per_optimizer_step(cfg, ranks)
        if rows % per_step:
            issues.append(Issue("rollout_batch_size", f"rollout_batch_size * num_return_sequences_in_group = {rows} "
                                                      f"is not divisible by per_device_train_batch_size * "
                                                      f"gradient_accumulation_steps * ranks ({ranks}) = {per_step} "
                                                      "(one optimiser step)"))
    if cfg.actor_infer is not None and cfg.actor_infer.strategy_args is not None:
        max_len = cfg.actor_infer.strategy_args.strategy_config.get("max_model_len")
        if isinstance(max_len, int) and cfg.prompt_length + cfg.response_length > max_len:
            issues.append(Issue("response_length", f"prompt_length + response_length = "
                                                   f"{cfg.prompt_length + cfg.response_length} exceeds "
                                                   f"actor_infer.strategy_config.max_model_len={max_len}"))
    return issues


def check_async(cfg: PipelineConfig) -> list[Issue]:
    """`async_generation_ratio` > 0 (ROLL's asynchronous pipeline): a whole number of steps ahead, on
    an engine with devices of its own, sampling that can stream."""
    ratio = cfg.async_generation_ratio
    if not ratio:
        return []
    issues = []
    if ratio != int(ratio):
        issues.append(Issue("async_generation_ratio", f"{ratio}: must be a whole number of steps (0 for the "
                                                      "synchronous loop, 1 to generate one step ahead, ...), as in "
                                                      "ROLL"))
    infer, train = cfg.actor_infer, cfg.actor_train
    if colocated(infer, train):
        both = sorted(set(infer.device_mapping) & set(train.device_mapping))
        issues.append(Issue("async_generation_ratio", f"{ratio:g} needs actor_infer and actor_train on devices of "
                            f"their own, but both use device(s) {both}: the engine generates the next steps while "
                            "the trainer trains, so they cannot take turns on one device; give each its own, e.g. "
                            "actor_infer.device_mapping=[0] actor_train.device_mapping=[1], or set 0"))
    if any(w.query_filter_config.type != "no_filter" for w in cfg.rewards.values()):
        issues.append(Issue("async_generation_ratio", f"{ratio:g} is not combined with dynamic sampling "
                                                      "(query_filter_config) in vroll yet; set 0, or remove the filter"))
    if cfg.old_logprobs_from_engine and infer is not None and infer.generating_args.temperature != 1.0:
        issues.append(Issue("old_logprobs_from_engine", f"true with async_generation_ratio {ratio:g} scores the "
                            "lagging samples on the engine, whose forward log-probs are untempered; that needs "
                            f"actor_infer.generating_args.temperature 1.0 (it is {infer.generating_args.temperature}"
                            "); set false to recompute them on the trainer"))
    if infer is not None and infer.generating_args.num_beams > 1:
        issues.append(Issue("async_generation_ratio", f"{ratio:g} streams sampled responses; beam search "
                                                      "(actor_infer.generating_args.num_beams > 1) cannot be paused "
                                                      "and resumed; set 0"))
    return issues


def check_critic(cfg: PipelineConfig, platform: str = "cpu") -> list[Issue]:
    """GAE needs a critic that trains with fsdp2_train (its batch sizes divide the rollout like the
    actor's); the critic's type and strategy checks are `check_role`'s."""
    if not critic_enabled(cfg):
        return []
    critic = cfg.critic
    if critic is None:
        default = "" if "adv_estimator" in cfg.model_fields_set else " (ROLL's default)"
        return [Issue("adv_estimator", f"'gae'{default} needs a `critic` role (a value model trained with "
                                       "fsdp2_train); or use grpo / reinforce, which need none")]
    issues = []
    name = critic.strategy_args.strategy_name if critic.strategy_args else None
    if name != "fsdp2_train" and not vroll_strategy("critic", name):  # else check_runnable names the override
        issues.append(Issue("critic.strategy_args.strategy_name", f"{name!r}: the critic trains with 'fsdp2_train'"))
    if critic.training_args is None:
        issues.append(Issue("critic.training_args", "is required (learning_rate, batch sizes, ...)"))
    elif name == "fsdp2_train" and not check_strategy("critic", critic, "train", None):
        per_step = critic_rows_per_step(cfg, platform)
        if rollout_rows(cfg) % per_step:
            issues.append(Issue("critic.training_args.per_device_train_batch_size",
                                f"rollout_batch_size * num_return_sequences_in_group = {rollout_rows(cfg)} is not "
                                f"divisible by the critic's per_device_train_batch_size * gradient_accumulation_steps"
                                f" * ranks = {per_step}"))
    return issues


def critic_rows_per_step(cfg: PipelineConfig, platform: str = "cpu") -> int:
    return rows_per_optimizer_step(cfg, trainer_ranks(cfg.critic, platform), cfg.critic)


def check_rewards_present(cfg: PipelineConfig) -> list[Issue]:
    return [] if cfg.rewards else [Issue("rewards", "needs at least one reward worker (e.g. reward_type: math_rule)")]


def check_eval_config(cfg: PipelineConfig) -> list[Issue]:
    """What `vroll evaluate` needs: an engine role, held-out prompts that exist, reward workers."""
    issues = []
    if cfg.actor_infer is None or cfg.actor_infer.strategy_args is None \
            or cfg.actor_infer.strategy_args.strategy_name != "vllm":
        issues.append(Issue("actor_infer", "is required by `vroll evaluate`, with strategy_name: vllm"))
    if cfg.validation is None or cfg.validation.data_args is None:
        issues.append(Issue("validation.data_args", "is required by `vroll evaluate`: the held-out prompts"))
    else:
        issues += check_data_files("validation.data_args", cfg.validation.data_args)
    issues += check_rewards_present(cfg)
    return issues


def check_data_files(key: str, data_args) -> list[Issue]:
    names = getattr(data_args, "file_name", None)
    if not names:
        return [Issue(f"{key}.file_name", "is required: the JSONL file(s) of prompts")]
    names = names if isinstance(names, list) else [names]
    return [Issue(f"{key}.file_name", f"{n!r} does not exist") for n in names if not Path(n).expanduser().is_file()]

"""The typed configuration: one pydantic model per YAML section, defaults in one place.

YAML keys are the guide's (ROLL's). Unknown keys are rejected (`extra="forbid"`), and pydantic
collects every type and range problem at once; cross-field rules live in `rules.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from vroll.config.device_mapping import parse_device_mapping
from vroll.config.lora import names_problem, target_problem
from vroll.config.options import parse_options, pass_through


class Section(BaseModel):
    # inf and nan are refused in every float (a key that gives infinity a meaning says so itself)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelArgs(Section):
    model_name_or_path: str | None = None  # defaults to the top-level `pretrain`
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    disable_gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    # ROLL's value-model kinds for the critic: both mean a scalar value head on the last hidden state
    model_type: Literal["trl", "auto_token_classification"] | None = None
    # ROLL's LoraArguments (config/lora.py): actor_train's lora_target turns LoRA on
    lora_target: str | list[str] | None = None  # module names (comma-separated), all-linear, or a regex
    lora_rank: int = 8
    lora_alpha: int | None = None  # None: 2 x lora_rank (ROLL's default)
    lora_dropout: float = 0.0
    additional_target: str | list[str] | None = None  # modules trained whole beside the adapters

    @field_validator("lora_target")
    @classmethod
    def _lora_target(cls, v):
        problem = target_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("additional_target")
    @classmethod
    def _additional_target(cls, v):
        problem = names_problem(v, "module names trained whole beside the adapters")
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("lora_rank")
    @classmethod
    def _lora_rank(cls, v):
        if v < 1:
            raise ValueError(f"{v!r}: LoRA's rank must be a whole number >= 1 (ROLL's default 8)")
        return v

    @field_validator("lora_alpha")
    @classmethod
    def _lora_alpha(cls, v):
        if v is not None and v < 1:
            raise ValueError(f"{v!r}: LoRA's alpha must be a whole number >= 1, or null for 2 x lora_rank")
        return v

    @field_validator("lora_dropout")
    @classmethod
    def _lora_dropout(cls, v):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{v!r}: LoRA's dropout must be a probability in [0, 1)")
        return v


class GeneratingArgs(Section):
    """Sampling settings. Every value is sent to the engine explicitly, never inherited from the
    model's generation_config.json."""

    max_new_tokens: int = Field(128, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, ge=0.0)  # 0 means greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)  # -1 or 0: no top-k filtering
    num_beams: int = Field(1, ge=1)
    num_return_sequences: int = Field(1, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    length_penalty: float = 1.0  # beam search only
    stop_strings: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False  # return the log-probability of each sampled token


class StrategyArgs(Section):
    strategy_name: str
    # Passed through to the backend (for vllm: its engine arguments, plus vroll's own keys).
    strategy_config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("strategy_config", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return {} if v is None else v

    @property
    def options(self):
        """vroll's own keys, typed, defaults filled in (`options.py`); the loader reports bad values."""
        return parse_options(self.strategy_name, self.strategy_config)[0]

    @property
    def backend_args(self) -> dict[str, Any]:
        """The rest of strategy_config, handed to the backend as it is (for vllm: engine arguments)."""
        return pass_through(self.strategy_name, self.strategy_config)


class TrainingArgs(Section):
    learning_rate: float = Field(1e-6, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    per_device_train_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    num_train_epochs: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0.0)  # ROLL's is top-level (roll_compat.py copies it here)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "constant"
    # an optimiser step whose loss or gradient norm is NaN or infinite is never applied; then the run
    # stops (naming the step and the likely cause), or skips the batch and counts it (train/skipped_steps)
    on_nonfinite: Literal["stop", "skip"] = "stop"


class DataArgs(Section):
    file_name: list[str] | str | None = None
    template: str | None = None
    prompt: str | None = None  # name of the prompt field in the data
    messages: str | None = None  # name of the chat-messages field in the data
    # actor_train's only: each domain's share of a step's batch (config/domains.py checks the values)
    domain_interleave_probs: dict[str, Annotated[float, Field(allow_inf_nan=True)]] | None = None


class PromptTemplate(Section):
    """vroll's own named template (`prompt_templates.<name>`): a ROLL template plus a system prompt and
    an instruction around each user message (config/templates.py)."""

    template: str = "native"  # the ROLL template it renders with
    system: str | None = None  # put first, unless the row has a system message of its own
    user: str | None = None  # each user message becomes this, with {content} replaced by the message


class RoleConfig(Section):
    """One role of the pipeline: the model it runs, how it samples, which backend, which devices."""

    model_args: ModelArgs = Field(default_factory=ModelArgs)
    generating_args: GeneratingArgs = Field(default_factory=GeneratingArgs)
    strategy_args: StrategyArgs | None = None
    device_mapping: list[int] = Field(default_factory=lambda: [0])
    infer_batch_size: int = Field(1, ge=1)  # micro-batch of forward-only work (scoring, log-probs)
    training_args: TrainingArgs | None = None
    data_args: DataArgs | None = None
    # ROLL's per-role environment: each of the role's Ray actors gets it (over the top-level
    # system_envs); a role in vroll's process sets it there when it starts (roles/launcher.py)
    system_envs: dict[str, Any] = Field(default_factory=dict)
    name: str = Field("", exclude=True)  # the role's key in the file, filled in by the loader
    seed: int | None = Field(None, exclude=True)  # the top-level seed, filled in by the loader

    @field_validator("device_mapping", mode="before")
    @classmethod
    def _parse_device_mapping(cls, v):
        return parse_device_mapping(v)

    def environment(self) -> dict[str, str]:
        """The role's system_envs as environment strings."""
        return {str(k): str(v) for k, v in self.system_envs.items()}


class RewardFilterConfig(Section):
    """DAPO's dynamic sampling (ROLL's query_filter_config): which prompt groups to drop and replace.
    mean_filter: drop when the group's mean reward <= threshold_down (-1) or >= threshold_up (inf);
    std_filter: drop when the group's reward std (unbiased) <= std_threshold (-1)."""

    type: Literal["no_filter", "mean_filter", "std_filter"] = "no_filter"
    filter_args: dict[str, Annotated[float, Field(allow_inf_nan=True)]] = Field(default_factory=dict)  # .inf: no bound

    @field_validator("filter_args")
    @classmethod
    def _no_nan(cls, v):
        bad = [k for k, x in v.items() if x != x]
        if bad:
            raise ValueError(f"{bad[0]}: nan is not a number (.inf and -.inf mean no bound)")
        return v


class RewardSystemConfig(Section):
    """reward_system (ROLL's RemoteRewardSystemWorker): the reward service and ROLL's protocol values,
    with ROLL's names and defaults (rewards/reward_system.py). ROLL reads these keys from a dict its
    RLVR pipeline never fills, so ROLL always calls its built-in internal service; vroll needs the two
    addresses."""

    submit_url: str | None = None
    get_result_url: str | None = None
    xrl_authorization: str | None = None  # else the environment's XRL_AUTHORIZATION; none: no header
    reward_system_type: Literal["online", "pre"] = "online"  # the BusinessType header
    project_id: str = "roll_default_experiment_id"  # ROLL's defaults, as its worker sends them
    experiment_id: str = "roll_default_task_id"
    priority: int = 1
    task_timeout_s: int = Field(300, ge=1)  # ROLL's reward_server_task_timeout: sent, and the polling's limit
    request_timeout_s: float = Field(20.0, gt=0)  # each HTTP request
    submit_tries: int = Field(5, ge=1)
    retry_delay_s: float = Field(1.0, ge=0)
    poll_interval_s: float = Field(2.0, gt=0)
    attempts: int = Field(5, ge=1)  # rounds of submit + poll for one sample
    max_workers: int = Field(32, ge=1)  # samples in flight at once


class RewardConfig(RoleConfig):
    """A reward worker. `tag_included` routes each prompt to the workers matching its tag."""

    reward_type: Literal["math_rule", "math_verify", "code_sandbox", "llm_judge", "crossthinkqa",
                         "choice_boxed", "choice_val", "ifeval", "format", "model", "reward_system"] = "math_rule"
    # math_rule: where the final answer is looked for, in this order
    extractors: list[Literal["boxed", "answer_tag", "last_number"]] = Field(
        default_factory=lambda: ["boxed", "answer_tag", "last_number"])
    # math_verify (ROLL's math worker): where the answer is read: ROLL's rule (after </think>, else after
    # the last blank line) or the whole response
    answer_region: Literal["roll", "whole"] = "roll"
    # code_sandbox: limits of each test run of the response's program
    time_limit_s: float = Field(10.0, gt=0.0)
    memory_limit_mb: int = Field(1024, ge=64)
    output_limit_kb: int = Field(1024, ge=1)
    # crossthinkqa (ROLL's multiple-choice rule): ROLL's reward_type of that worker
    grading: Literal["loose", "soft", "strict"] = "loose"
    # llm_judge (ROLL's judge): ROLL's prompt name or a template with {question}, {response}, {reference};
    # the judge behind an OpenAI-compatible endpoint (judge_model_type: api) or the worker's own model on
    # vroll's vllm strategy (inference)
    judge_prompt: str | None = None
    judge_model_type: str | None = None  # ROLL's api / inference / cluster (the top-level reward_model's engine)
    judge_model_name: str | None = None
    judge_api_url: str | None = None
    judge_api_key: str | None = None  # else the environment's OPENAI_API_KEY, if any
    # format: 1 when the whole response (stripped) matches this regular expression, else 0
    pattern: str | None = None
    # reward_system (ROLL's RemoteRewardSystemWorker): the service, and ROLL's plug-in list sent with
    # each sample as `reward_manager`
    reward_system_config: RewardSystemConfig | None = None
    reward_manager_config: list[dict[str, Any]] = Field(default_factory=list)
    tag_included: list[str] = Field(default_factory=list)
    weight: float = 1.0
    world_size: int = Field(1, ge=1)
    query_filter_config: RewardFilterConfig = Field(default_factory=RewardFilterConfig)
    response_filter_config: RewardFilterConfig = Field(default_factory=RewardFilterConfig)  # no effect (no_effect.py)
    response_length_penalty_coef: float = 0.0  # no effect (no_effect.py)


class ISWeightConfig(Section):
    """train_infer_correction.is_weight: pi_train / pi_rollout weights on the policy loss."""

    enabled: bool = False
    weight_type: Literal["token", "segment", "geometric", "sequence"] = "token"
    upper_bound: float | None = Field(1.2, gt=0.0)
    detach: bool = True


class CorrectionFilterConfig(Section):
    """One train_infer_correction filter: drops tokens whose train/rollout ratio or difference is out of range."""

    enabled: bool = False
    agg_type: Literal["token", "segment", "geometric", "sequence"] = "token"
    ratio_enabled: bool = True
    ratio_low: float = 0.8
    ratio_high: float = 1.2
    diff_enabled: bool = False
    diff_low: float = -0.2
    diff_high: float = 0.2


class TrainInferCorrectionConfig(Section):
    is_weight: ISWeightConfig = Field(default_factory=ISWeightConfig)
    filters: list[CorrectionFilterConfig] = Field(default_factory=list)


class ValidationConfig(Section):
    data_args: DataArgs | None = None
    generating_args: GeneratingArgs = Field(default_factory=GeneratingArgs)


class PipelineConfig(Section):
    """The whole file. Top-level values are shared by the roles (through `${...}` interpolation)."""

    exp_name: str = "vroll"
    seed: int = 42
    pretrain: str | None = None
    reward_pretrain: str | None = None
    output_dir: str = "./output"
    ray_address: str | None = None
    num_gpus_per_node: int = Field(8, ge=1)
    system_envs: dict[str, Any] = Field(default_factory=dict)  # set in vroll's process before roles start
    track_with: str | None = "tensorboard"  # besides metrics.jsonl (config/trackers.py), ROLL's default
    tracker_kwargs: dict[str, Any] = Field(default_factory=dict)
    # prompt templates (config/templates.py): ROLL's names, and vroll's own entries they may name
    global_template: str | None = None
    tag_to_template: dict[str, str] = Field(default_factory=dict)
    prompt_templates: dict[str, PromptTemplate] = Field(default_factory=dict)

    # RL loop sizes (used by `vroll train`)
    max_steps: int = Field(100, ge=1)
    save_steps: int = Field(100, ge=1)
    max_ckpt_to_keep: int = Field(0, ge=0)  # keep the newest N checkpoints (0: all), as ROLL
    logging_steps: int = Field(1, ge=1)
    eval_steps: int = Field(10, ge=1)
    resume_from_checkpoint: str | bool = False
    rollout_batch_size: int = Field(64, ge=1)
    prompt_length: int = Field(1024, ge=1)
    response_length: int = Field(1024, ge=1)
    num_return_sequences_in_group: int = Field(1, ge=1)
    ppo_epochs: int = Field(1, ge=1)
    # The algorithm: ROLL's keys, defaults and meaning (docs/algorithms.md; pipeline/algorithms.py).
    adv_estimator: Literal["grpo", "reinforce", "gae"] = "gae"  # ROLL's default: needs a critic
    pg_variant: Literal["vanilla", "ppo", "tis", "topr", "cispo", "kimi15"] = "ppo"
    tis_lower_bound: float = 0.0  # pg_variant tis: clamp of the detached ratio
    tis_upper_bound: float = 1.0
    topr_positive_weight: float = 1.0  # pg_variant topr
    topr_negative_weight: float = 1.0
    cispo_epsilon_low: float = 0.1  # pg_variant cispo
    cispo_epsilon_high: float = 0.1
    cispo_use_unified_mask: bool = False
    kimi15_tau: float = 0.1  # pg_variant kimi15
    gamma: float = Field(1.0, ge=0.0, le=1.0)  # discount of the return
    lambd: float = Field(0.95, ge=0.0, le=1.0)  # gae: GAE's lambda
    value_clip: float | None = Field(None, gt=0.0)  # gae: the critic's values move at most this far per step
    critic_warmup: int = Field(0, ge=0)  # gae: steps that train only the critic
    norm_mean_type: Literal["batch", "group", "running"] | None = None  # grpo always uses group
    norm_std_type: Literal["batch", "group", "running"] | None = None
    reward_clip: float | None = None  # after normalisation, and again on the token rewards
    whiten_rewards: bool = False
    whiten_advantages: bool = False
    advantage_clip: float | None = None
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                           "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    pg_clip: float = Field(0.2, gt=0.0)  # PPO ratio clip range
    use_pg_clip_range: bool = False  # clip to [1 - pg_clip_low, 1 + pg_clip_high] instead
    pg_clip_low: float = Field(0.2, gt=0.0)
    pg_clip_high: float = Field(0.2, gt=0.0)
    dual_clip_loss: bool = False  # cap negative-advantage losses at (1 + 2 pg_clip) |A|
    importance_sampling: Literal["token", "seq"] = "token"  # seq: GSPO's sequence-level ratio
    entropy_loss_coef: float = Field(0.0, ge=0.0)
    rl_loss_coef: float = Field(1.0, ge=0.0)  # scales the policy and KL loss terms, not the entropy bonus
    tis_clip: float | None = Field(None, gt=0.0)  # vroll's: min(pi_train / pi_rollout, cap) on the loss (None: off)
    train_infer_correction: TrainInferCorrectionConfig = Field(default_factory=TrainInferCorrectionConfig)
    # sample selection and weighting
    max_len_mask: bool = False  # drop responses cut at response_length from the loss
    difficulty_mask: bool = False  # drop groups whose mean reward is not strictly inside the thresholds
    difficulty_low_threshold: float = 0.0
    difficulty_high_threshold: float = 1.0
    error_max_len_clip: bool = False  # keep right answers, and wrong ones shorter than the threshold
    error_max_len_threshold: int = 9999999999
    length_loss_weight: bool = False  # weight shorter responses up: 1.5 - (len - min) / (max - min)
    # ROLL declares these and never reads them: accepted, no effect (no_effect.py)
    mask_type: Literal["all", "loss"] = "loss"
    add_len_reward: bool = False
    use_reward_scaling: bool = False
    use_reward_norm: bool = False
    difficulty_loss_weight: bool = False  # weight harder prompts up: 0.5 + 1.5 x the row's `difficulty`
    # dynamic sampling: groups the reward workers' query_filter_config drops are replaced by new prompts
    is_use_additional_prompts: bool = False  # draw max_additional_running_prompts at a time, not just the gap
    max_additional_running_prompts: int = Field(16, ge=1)
    max_additional_prompts_per_step: int | None = Field(None, ge=0)  # vroll's bound (None: 4 x rollout_batch_size)
    use_kl_loss: bool = False  # a k3 KL(policy || reference) loss term, weighted by kl_loss_coef
    kl_loss_coef: float = Field(0.0, ge=0.0)
    # the per-token KL reward penalty's coefficient (add_token_level_kl); ROLL's default 0.2 also turns on
    # the reference and the old-log-prob recompute: set 0 to run without them
    init_kl_coef: float = Field(0.2, ge=0.0)
    add_token_level_kl: bool = False
    kl_penalty: Literal["kl", "abs", "mse", "k3"] = "kl"  # the estimator of that penalty
    target_kl: float | None = Field(None, gt=0.0)  # adaptive KL coefficient towards this KL
    kl_horizon: int = Field(10000, ge=1)
    enable_reference: bool = False  # also on when a KL term needs the reference
    enable_old_logprobs_recompute: bool = False
    force_disable_old_logprobs_recompute: bool = False
    # vroll's: the engine's sampled-token log-probs serve as the old ones where ROLL's rule recomputes
    # them, the trainer's recompute still measuring the mismatch every mismatch_check_steps steps
    old_logprobs_from_engine: bool = False
    mismatch_check_steps: int = Field(10, ge=1)
    # ROLL's: generation runs this many steps' rollouts ahead of training (0: synchronous)
    async_generation_ratio: float = Field(0.0, ge=0.0)
    validation: ValidationConfig | None = None

    actor_infer: RoleConfig | None = None
    actor_train: RoleConfig | None = None
    reference: RoleConfig | None = None
    critic: RoleConfig | None = None  # the value model of adv_estimator: gae
    rewards: dict[str, RewardConfig] = Field(default_factory=dict)
    # ROLL's shared judge server: the model every `judge_model_type: cluster` judge asks (on vllm)
    reward_model: RoleConfig | None = None
    # filled by the loader: ROLL keys set with no effect here, and ROLL keys adopted with a difference
    _no_effect: dict[str, str] = PrivateAttr(default_factory=dict)
    _differences: dict[str, str] = PrivateAttr(default_factory=dict)

    def roles(self) -> dict[str, RoleConfig]:
        """Every configured role by its dotted key path (rewards as `rewards.<name>`)."""
        out = {k: getattr(self, k) for k in ("actor_infer", "actor_train", "reference", "critic")}
        out.update({f"rewards.{k}": v for k, v in self.rewards.items()})
        out["reward_model"] = self.reward_model
        return {k: v for k, v in out.items() if v is not None}

"""The sampling each job sends to an engine, with the YAML key every value comes from, so that a value
the engine would refuse is reported by its key before any engine starts."""

from __future__ import annotations

from dataclasses import dataclass, field

from vroll.config.errors import Issue
from vroll.config.schema import GeneratingArgs, PipelineConfig

# `vroll train` samples with actor_infer's generating_args, but these two come from top-level keys.
ROLLOUT_KEYS = {"num_return_sequences": "num_return_sequences_in_group", "max_new_tokens": "response_length"}


@dataclass(frozen=True)
class SamplingRequest:
    args: GeneratingArgs
    section: str  # where the values live, e.g. "actor_infer.generating_args"
    renamed: dict[str, str] = field(default_factory=dict)  # values set from elsewhere: field -> key

    def key(self, name: str) -> str:
        return self.renamed.get(name, f"{self.section}.{name}")


def rollout_args(cfg: PipelineConfig) -> GeneratingArgs:
    """actor_infer's sampling, with the group size, the response budget and sampled-token log-probs."""
    return cfg.actor_infer.generating_args.model_copy(update={
        "num_return_sequences": cfg.num_return_sequences_in_group, "max_new_tokens": cfg.response_length,
        "logprobs": True, "num_beams": 1})


def job_sampling(cfg: PipelineConfig, job: str | None = None, role: str = "actor_infer") -> list[SamplingRequest]:
    """What `vroll <job>` sends to engines: train the rollout; generate `role`'s; train, sft and evaluate
    the validation's; no job: every vllm role's and the validation's."""
    out = []
    if job == "train" and cfg.actor_infer is not None:
        out.append(SamplingRequest(rollout_args(cfg), "actor_infer.generating_args", ROLLOUT_KEYS))
    for path, r in cfg.roles().items():
        engine = r.strategy_args is not None and r.strategy_args.strategy_name == "vllm"
        if (job is None and engine) or (job == "generate" and path == role):
            out.append(SamplingRequest(r.generating_args, f"{path}.generating_args"))
    if job != "generate" and cfg.validation is not None:
        out.append(SamplingRequest(cfg.validation.generating_args, "validation.generating_args"))
    return out


def greedy_issues(req: SamplingRequest) -> list[Issue]:
    """Greedy decoding (temperature 0) gives one answer per prompt: several samples of it are refused
    (vLLM refuses them too, but only once its engine has started)."""
    g = req.args
    if g.num_beams > 1 or g.temperature != 0 or g.num_return_sequences == 1:
        return []
    return [Issue(req.key("num_return_sequences"),
                  f"{g.num_return_sequences} samples per prompt with {req.key('temperature')}: 0 (greedy "
                  "decoding gives every prompt one answer): set a temperature above 0 to sample, or ask for "
                  "1 sample per prompt")]

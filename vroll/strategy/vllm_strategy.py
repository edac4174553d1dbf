"""The `vllm` strategy: one vLLM engine serving a role (generation, and forward-only scoring)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from vroll.config.schema import GeneratingArgs, RoleConfig
from vroll.strategy import vllm_compat
from vroll.strategy.prompts import Prompt, encode_prompt, fit_prompts
from vroll.strategy.results import PromptResult, Sample, to_padded_batch
from vroll.strategy.sampling import beam_search_params, describe, request_seed, sampling_params
from vroll.strategy.vllm_args import CPU_DEFAULT_KV_CACHE_BYTES, DTYPES, split_strategy_config

log = logging.getLogger(__name__)


class ModelNotFound(FileNotFoundError):
    pass


def resolve_model_path(name: str, key: str) -> str:
    """A local folder, or a Hugging Face id already in the local cache (vroll never downloads)."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return name
    except Exception:  # not a valid repo id
        pass
    raise ModelNotFound(
        f"{key}: {name!r} is neither a local model folder nor a model in the Hugging Face cache. "
        "Build the tiny model with `vroll tiny-model --out models/tiny`, or download the model first."
    )


def engine_kwargs(role: RoleConfig, seed: int | None, engine_args: dict[str, Any], platform: str) -> dict[str, Any]:
    kwargs = dict(engine_args)
    kwargs["model"] = resolve_model_path(role.model_args.model_name_or_path, f"{role.name}.model_args.model_name_or_path")
    kwargs["dtype"] = DTYPES[role.model_args.dtype]
    kwargs["trust_remote_code"] = role.model_args.trust_remote_code
    if seed is not None:
        kwargs["seed"] = seed
    if platform == "cpu" and "gpu_memory_utilization" not in kwargs and "kv_cache_memory_bytes" not in kwargs:
        kwargs["kv_cache_memory_bytes"] = CPU_DEFAULT_KV_CACHE_BYTES
    return kwargs


class VllmStrategy:
    """Builds the engine from `model_args` and `strategy_config`; generates and scores."""

    def __init__(self, role: RoleConfig, seed: int | None = None):
        self._llm = None
        vllm_compat.check_vllm_version()
        if len(role.device_mapping) > 1 and len(role.device_mapping) > _devices_per_engine(role):
            raise NotImplementedError(
                f"{role.name}.device_mapping: {len(role.device_mapping)} devices mean several data-parallel "
                "engines, which need the Ray cluster layer (not implemented yet); use one engine's devices"
            )
        self.role = role
        self.name = role.name or "actor_infer"
        self.seed = seed if seed is not None else 0
        self.options, engine_args = split_strategy_config(role.strategy_args.strategy_config)
        self.logprobs_mode = engine_args.get("logprobs_mode", "raw_logprobs")
        vllm_compat.prepare_in_process_engine()
        self.platform = vllm_compat.current_platform_name()
        kwargs = engine_kwargs(role, seed, engine_args, self.platform)

        from vllm import LLM

        started = time.perf_counter()
        self._llm = LLM(**kwargs)
        vllm_compat.engine_started()
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.weight_version = 0
        self._calls = 0
        self._described: set[str] = set()
        log.info("%s: vLLM engine ready in %.1f s (model %s, max_model_len %d, platform %s)",
                 self.name, time.perf_counter() - started, kwargs["model"], self.max_model_len, self.platform)

    @property
    def llm(self):
        if self._llm is None:
            raise RuntimeError(f"{self.name}: the vLLM engine is closed")
        return self._llm

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Any], generating_args: GeneratingArgs | None = None,
                 prompt_overflow: str | None = None, use_tqdm: bool = False) -> list[PromptResult]:
        """Samples for each prompt (text, chat messages or token ids), in input order.

        The whole batch goes to vLLM at once: its scheduler bounds concurrency (max_num_seqs,
        max_num_batched_tokens), so `infer_batch_size` does not serialize generation.
        """
        g = generating_args or self.role.generating_args
        encoded = [encode_prompt(i, p, self.tokenizer) for i, p in enumerate(prompts)]
        policy = prompt_overflow or self.options["prompt_overflow"]
        encoded = fit_prompts(encoded, g.max_new_tokens, self.max_model_len, policy)
        self._log_once(g)
        call, self._calls = self._calls, self._calls + 1
        live = [p for p in encoded if p.status != "skipped"]
        if live:
            samples = self._beam_search(live, g, use_tqdm) if g.num_beams > 1 else self._sample(live, g, call, use_tqdm)
        else:
            samples = []
        by_index = dict(zip((p.index for p in live), samples))
        counts = {s: sum(p.status == s for p in encoded) for s in ("truncated", "skipped")}
        if any(counts.values()):
            log.warning("%s: %d prompt(s) truncated and %d skipped to fit max_model_len %d",
                        self.name, counts["truncated"], counts["skipped"], self.max_model_len)
        return [
            PromptResult(index=p.index, prompt_token_ids=p.token_ids, prompt=p.text,
                         samples=by_index.get(p.index, []), status=p.status, weight_version=self.weight_version)
            for p in encoded
        ]

    def _sample(self, prompts: list[Prompt], g: GeneratingArgs, call: int, use_tqdm: bool) -> list[list[Sample]]:
        params = [sampling_params(g, request_seed(self.seed, call, p.index)) for p in prompts]
        outputs = self.llm.generate([{"prompt_token_ids": p.token_ids} for p in prompts], params, use_tqdm=use_tqdm)
        return [[_to_sample(c) for c in out.outputs] for out in outputs]

    def _beam_search(self, prompts: list[Prompt], g: GeneratingArgs, use_tqdm: bool) -> list[list[Sample]]:
        outputs = self.llm.beam_search([{"prompt_token_ids": p.token_ids} for p in prompts],
                                       beam_search_params(g), use_tqdm=use_tqdm)
        eos = self.tokenizer.eos_token_id
        result = []
        for p, out in zip(prompts, outputs):
            samples = []
            for beam in out.sequences[: g.num_return_sequences]:
                ids = list(beam.tokens[len(p.token_ids):])
                lps = [d[t].logprob for d, t in zip(beam.logprobs, ids)] if g.logprobs else None
                stopped = (ids and ids[-1] == eos and not g.ignore_eos) or beam.finish_reason == "stop"
                samples.append(Sample(ids, self.tokenizer.decode(ids, skip_special_tokens=True),
                                      "stop" if stopped else "length", lps))
            result.append(samples)
        return result

    def _log_once(self, g: GeneratingArgs) -> None:
        text = describe(g, self.logprobs_mode)
        if text not in self._described:
            self._described.add(text)
            log.info("%s: %s", self.name, text)

    # -- forward-only work ------------------------------------------------------------------
    def compute_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-probability of every token after the first, for given token sequences; forward
        passes in micro-batches of `infer_batch_size`."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        out: list[list[float]] = []
        bs = self.role.infer_batch_size
        for start in range(0, len(sequences), bs):
            chunk = [list(s) for s in sequences[start:start + bs]]
            for seq, res in zip(chunk, self.llm.generate([{"prompt_token_ids": s} for s in chunk], params,
                                                         use_tqdm=False)):
                out.append([d[t].logprob for d, t in zip(res.prompt_logprobs[1:], seq[1:])])
        return out

    def to_batch(self, results: list[PromptResult]):
        """Results as padded tensors for a trainer (see `results.to_padded_batch`)."""
        pad = self.tokenizer.pad_token_id
        return to_padded_batch(results, pad if pad is not None else self.tokenizer.eos_token_id)

    # -- life cycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the engine and free its memory; safe to call twice."""
        llm, self._llm = self._llm, None
        if llm is not None:
            vllm_compat.shutdown_engine(llm)
            log.info("%s: vLLM engine closed", self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _devices_per_engine(role: RoleConfig) -> int:
    from vroll.strategy.vllm_args import devices_per_engine

    return devices_per_engine(role.strategy_args.strategy_config)


def _to_sample(c) -> Sample:
    lps = [d[t].logprob for d, t in zip(c.logprobs, c.token_ids)] if c.logprobs is not None else None
    return Sample(list(c.token_ids), c.text, c.finish_reason or "length", lps)

"""`generating_args` to vLLM sampling parameters. Every value is set explicitly, so nothing comes
from the model's generation_config.json (a source of train/infer mismatch)."""

from __future__ import annotations

import hashlib
import json
import os

from vroll.config.engine_args import cache_dir, installed_vllm_version
from vroll.config.errors import Issue
from vroll.config.sampling import SamplingRequest
from vroll.config.schema import GeneratingArgs


def sampling_params(g: GeneratingArgs, seed: int | None = None):
    from vllm import SamplingParams

    return SamplingParams(
        n=g.num_return_sequences,
        max_tokens=g.max_new_tokens,
        min_tokens=g.min_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k if g.top_k > 0 else 0,  # vLLM: 0 disables top-k
        min_p=0.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        repetition_penalty=g.repetition_penalty,
        stop=list(g.stop_strings),
        stop_token_ids=list(g.stop_token_ids),
        ignore_eos=g.ignore_eos,
        logprobs=0 if g.logprobs else None,  # 0: just the sampled token's log-probability
        seed=seed,
        skip_special_tokens=True,
    )


def stream_sampling_params(g: GeneratingArgs, seed: int, generated: int = 0):
    """One sample of a streamed group (`strategy.streaming`), `generated` tokens into it: n=1, the
    token budget it has left, and its new tokens delivered at every engine step (so a pause keeps them)."""
    from vllm.sampling_params import RequestOutputKind

    left = g.model_copy(update={"num_return_sequences": 1, "max_new_tokens": g.max_new_tokens - generated,
                                "min_new_tokens": max(g.min_new_tokens - generated, 0)})
    params = sampling_params(left, seed)
    params.output_kind = RequestOutputKind.DELTA
    return params


def beam_search_params(g: GeneratingArgs):
    from vllm.sampling_params import BeamSearchParams

    return BeamSearchParams(
        beam_width=g.num_beams,
        max_tokens=g.max_new_tokens,
        ignore_eos=g.ignore_eos,
        temperature=g.temperature,
        length_penalty=g.length_penalty,
    )


def describe(g: GeneratingArgs, logprobs_mode: str) -> str:
    """The effective sampling values, for the log."""
    if g.num_beams > 1:
        return (f"beam search: beams={g.num_beams} return={g.num_return_sequences} max_tokens={g.max_new_tokens} "
                f"length_penalty={g.length_penalty} temperature={g.temperature}")
    return (f"sampling: n={g.num_return_sequences} max_tokens={g.max_new_tokens} min_tokens={g.min_new_tokens} "
            f"temperature={g.temperature} top_p={g.top_p} top_k={g.top_k if g.top_k > 0 else 'off'} "
            f"repetition_penalty={g.repetition_penalty} stop={g.stop_strings} stop_token_ids={g.stop_token_ids} "
            f"ignore_eos={g.ignore_eos} logprobs={'sampled token, ' + logprobs_mode if g.logprobs else 'off'}")


def request_seed(base_seed: int, call: int, index: int) -> int:
    """A seed per prompt: reproducible across runs, independent of batching and of how prompts are
    split between engines, and different for every call and prompt (vLLM adds the sample's index
    for the n samples of one prompt, so those differ too)."""
    digest = hashlib.blake2b(f"{base_seed}:{call}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x3FFFFFFF


# vLLM's parameter names for GeneratingArgs' fields, where they differ.
VLLM_NAMES = {"n": "num_return_sequences", "max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens",
              "stop": "stop_strings", "beam_width": "num_beams"}


def vllm_refusals(req: SamplingRequest, limit: int = 8) -> list[Issue]:
    """The installed vLLM's own verdict on a request: its parameters are built as the engine builds them,
    and each value vLLM refuses becomes an issue at its YAML key (then is reset, to find the next)."""
    g, issues = req.args, []
    for _ in range(limit):
        verdict = vllm_verdict(g)
        if verdict is None:
            break
        name, message = verdict
        if name is None:
            issues.append(Issue(req.section, f"refused by vLLM: {message}"))
            break
        issues.append(Issue(req.key(name), f"{getattr(g, name)!r} is refused by vLLM: {message}"))
        g = g.model_copy(update={name: getattr(GeneratingArgs(), name)})
    return issues


def vllm_verdict(g: GeneratingArgs) -> tuple[str | None, str] | None:
    """None when vLLM accepts `g`, else (the field it refuses, or None, and its message). Verdicts are
    kept per vLLM version in vroll's cache folder, so checking a file again does not import vLLM."""
    # "-2": verdicts of the rules below (values vLLM changes are refused too); older files are not read
    path = cache_dir() / f"sampling-vllm-{installed_vllm_version()}-2.json"
    key = g.model_dump_json()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = _ask_vllm(g)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs the import next time
    verdict = known[key]
    return None if verdict is None else (verdict[0], verdict[1])


def _ask_vllm(g: GeneratingArgs) -> list | None:
    from vllm.exceptions import VLLMClientError

    try:
        params = beam_search_params(g) if g.num_beams > 1 else sampling_params(g)
    except (VLLMClientError, ValueError) as e:
        message = str(e.args[0]) if e.args else str(e)
        return [refused_field(e, message), message]
    return changed_temperature(g, params)


def changed_temperature(g: GeneratingArgs, params) -> list | None:
    """vLLM raises a temperature in (0, 0.01) to 0.01 with only a log line per request (0.32's
    `SamplingParams.__post_init__`): the rollouts would not be sampled at the temperature the file
    asks for, and the trainer would score their log-probs at the one asked for. Refused instead."""
    if params.temperature == g.temperature:
        return None
    return ["temperature", f"vLLM samples it at {params.temperature} instead (it raises temperatures between 0 "
                           f"and {params.temperature}); set 0 for greedy decoding or at least {params.temperature}"]


def refused_field(e: Exception, message: str) -> str | None:
    """The GeneratingArgs field vLLM names (its error's `parameter`, else the message's first word)."""
    name = getattr(e, "parameter", None) or (message.split() or [""])[0]
    name = VLLM_NAMES.get(name, name)
    return name if name in GeneratingArgs.model_fields else None

"""The `vllm` strategy: one vLLM engine serving a role (generation, and forward-only scoring)."""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from typing import Any, Sequence

from vroll.config.dtypes import DTYPES
from vroll.config.engine_args import engine_defaults
from vroll.config.layout import devices_per_engine
from vroll.config.schema import GeneratingArgs, RoleConfig
from vroll.models.paths import resolve_model_path
from vroll.strategy import shm_transfer, vllm_compat
from vroll.strategy.engine_state import EngineState, EngineStateError
from vroll.strategy.prompts import Prompt, encode_prompt, fit_prompts, prompt_room
from vroll.strategy.results import PromptResult, Sample, to_padded_batch
from vroll.strategy.sampling import (beam_search_params, describe, request_seed, sampling_params,
                                     stream_sampling_params)
from vroll.strategy.streaming import EngineLock, RolloutStream
from vroll.strategy.transport import unpack_bucket
from vroll.strategy.weights import (
    UpdateSession, WeightUpdateError, buckets, expected_layout, tied_names, validate_all,
)

log = logging.getLogger(__name__)


def engine_kwargs(role: RoleConfig, seed: int | None, platform: str) -> dict[str, Any]:
    """`LLM(...)` arguments: the file's engine arguments, vroll's defaults, and what other keys set."""
    kwargs = engine_defaults(role.strategy_args.backend_args, platform)
    kwargs["model"] = resolve_model_path(role.model_args.model_name_or_path, f"{role.name}.model_args.model_name_or_path")
    kwargs["dtype"] = DTYPES[role.model_args.dtype].torch_name
    kwargs["trust_remote_code"] = role.model_args.trust_remote_code
    if seed is not None:
        kwargs["seed"] = seed
    kwargs["weight_transfer_config"] = {"backend": shm_transfer.BACKEND}  # every update goes through it
    return kwargs


class VllmStrategy:
    """Builds the engine from `model_args` and `strategy_config`; generates and scores."""

    def __init__(self, role: RoleConfig, seed: int | None = None):
        self._llm = None
        vllm_compat.check_vllm_version()
        if len(role.device_mapping) > devices_per_engine(role.strategy_args.backend_args):
            raise ValueError(
                f"{role.name}.device_mapping: {len(role.device_mapping)} devices mean several data-parallel "
                "engines; start the role with vroll.roles.launch_role, which starts them on Ray"
            )
        self.role = role
        self.name = role.name or "actor_infer"
        self.seed = seed if seed is not None else 0
        self.options = role.strategy_args.options
        self.logprobs_mode = role.strategy_args.backend_args.get("logprobs_mode", "raw_logprobs")
        vllm_compat.prepare_in_process_engine()
        self.platform = vllm_compat.current_platform_name()
        if self.platform == "cpu":
            vllm_compat.patch_cpu_seeded_sampling()
            vllm_compat.patch_cpu_embedding_pack()
            vllm_compat.keep_freed_memory()  # weight updates reuse the memory the last one freed
        kwargs = engine_kwargs(role, seed, self.platform)
        self.model_path = kwargs["model"]

        from vllm import LLM

        started = time.perf_counter()
        shm_transfer.register_engine()
        self._llm = LLM(**kwargs)
        import torch

        self._threads = torch.get_num_threads()  # what the engine's CPU kernels were set up with
        vllm_compat.hold_process_group()
        self._sync = vllm_compat.LLMWeightSync(self._llm)  # vLLM's protocol: init, start, update, finish
        self._sync.init_weight_transfer_engine({})
        self._transfer_open = False
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.weight_version = 0
        self.state = EngineState()
        if kwargs.get("load_format") == "dummy":
            self.state.invalidate("load_format: dummy started it with random weights; the first update_weights() "
                                  "brings the real ones")
        self._lock = EngineLock()  # one engine call at a time: vLLM's LLM is not thread-safe
        self._stream: RolloutStream | None = None  # generation running on in the background (async RL)
        self._layout = None
        self._update: UpdateSession | None = None
        self._calls = 0
        self._described: set[str] = set()
        log.info("%s: vLLM engine ready in %.1f s (model %s, max_model_len %d, platform %s, pid %d)",
                 self.name, time.perf_counter() - started, kwargs["model"], self.max_model_len, self.platform,
                 os.getpid())

    @property
    def llm(self):
        if self._llm is None:
            raise RuntimeError(f"{self.name}: the vLLM engine is closed")
        return self._llm

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Any], generating_args: GeneratingArgs | None = None,
                 prompt_overflow: str | None = None, use_tqdm: bool = False,
                 seed_indices: Sequence[int] | None = None, call: int | None = None) -> list[PromptResult]:
        """Samples for each prompt (text, chat messages or token ids), in input order.

        The whole batch goes to vLLM at once: its scheduler bounds concurrency (max_num_seqs,
        max_num_batched_tokens), so `infer_batch_size` does not serialize generation.
        `seed_indices` are the prompts' positions in a larger batch split between engines, so that
        each prompt is sampled the same whichever engine gets it (with `call`, the caller's count of
        generate calls, which also enters the seed).
        """
        with self._foreground():
            self.state.require_serving("generate", self.name)
            return self._generate(prompts, generating_args, prompt_overflow, use_tqdm, seed_indices, call)

    def _generate(self, prompts, generating_args, prompt_overflow, use_tqdm, seed_indices=None,
                  call=None) -> list[PromptResult]:
        g = generating_args or self.role.generating_args
        encoded = [encode_prompt(i, p, self.tokenizer) for i, p in enumerate(prompts)]
        policy = prompt_overflow or self.options.prompt_overflow
        encoded = fit_prompts(encoded, g.max_new_tokens, self.max_model_len, policy)
        self._log_once(g)
        if call is None:
            call, self._calls = self._calls, self._calls + 1
        live = [p for p in encoded if p.status != "skipped"]
        if live:
            seeds = [seed_indices[p.index] if seed_indices is not None else p.index for p in live]
            try:
                samples = (self._beam_search(live, g, use_tqdm) if g.num_beams > 1
                           else self._sample(live, g, call, use_tqdm, seeds))
            except BaseException:  # incl. Ctrl-C: leave no half-done request behind for the next call
                aborted = vllm_compat.abort_unfinished(self.llm)
                log.error("%s: generation failed; %d unfinished request(s) aborted", self.name, aborted)
                raise
        else:
            samples = []
        by_index = dict(zip((p.index for p in live), samples))
        counts = {s: sum(p.status == s for p in encoded) for s in ("truncated", "skipped")}
        if any(counts.values()):
            log.warning("%s: %d prompt(s) truncated and %d skipped to fit max_model_len %d",
                        self.name, counts["truncated"], counts["skipped"], self.max_model_len)
        for s in (s for group in samples for s in group):  # every token from the weights of the moment
            s.token_versions = [self.weight_version] * len(s.token_ids)
        return [
            PromptResult(index=p.index, prompt_token_ids=p.token_ids, prompt=p.text,
                         samples=by_index.get(p.index, []), status=p.status, weight_version=self.weight_version)
            for p in encoded
        ]

    def _sample(self, prompts: list[Prompt], g: GeneratingArgs, call: int, use_tqdm: bool,
                seeds: list[int]) -> list[list[Sample]]:
        params = [sampling_params(g, request_seed(self.seed, call, i)) for i in seeds]
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

    # -- generation in the background (the asynchronous pipeline) -----------------------------
    def submit(self, keys: Sequence[int], prompts: Sequence[Sequence[int]], generating_args: GeneratingArgs,
               call: int, seed_indices: Sequence[int] | None = None) -> None:
        """Start generating a group of samples for each prompt (token ids) in the background; `keys`
        name the groups for `collect`. A weight update pauses them and continues them on the new
        weights from the tokens they have (partial rollout). Seeds as `generate`'s: from `call` and
        each prompt's `seed_indices` entry (default its key), so the same call and index sample alike."""
        room = prompt_room(generating_args.max_new_tokens, self.max_model_len)
        too_long = [k for k, p in zip(keys, prompts) if len(p) > room]
        if too_long:
            raise ValueError(f"{self.name}: prompt of group {too_long[0]} plus max_new_tokens "
                             f"{generating_args.max_new_tokens} exceeds max_model_len {self.max_model_len}")
        with self._lock:
            self.state.require_serving("generate", self.name)
            self._log_once(generating_args)
            if self._stream is None:
                self._stream = RolloutStream(self.llm, self._lock, lambda: self.weight_version,
                                             stream_sampling_params, self.name, self._threads)
            self._stream.submit(list(keys), [list(p) for p in prompts], generating_args,
                                [request_seed(self.seed, call, i) for i in (seed_indices or keys)])

    def collect(self, min_groups: int = 1, wait_s: float = 0.0) -> list[PromptResult]:
        """Groups finished in the background since the last call (each returned once), waiting up to
        `wait_s` for `min_groups`; a result's `index` is its key, each token carries its weight version."""
        return self._stream.collect(min_groups, wait_s) if self._stream is not None else []

    def drop(self, keys: Sequence[int]) -> int:
        """Stop and forget submitted groups (too stale to use)."""
        return self._stream.drop(list(keys)) if self._stream is not None else 0

    def stream_report(self) -> dict:
        """Seconds the background generation sat idle or paused, samples resumed, tokens, since the
        last report."""
        return self._stream.report() if self._stream is not None else {}

    @contextmanager
    def _foreground(self):
        """An engine call of its own (generate, scoring): background samples pause and then go on."""
        with self._lock:
            stream = self._stream if self._stream is not None and self._stream.active else None
            if stream is not None:
                stream.pause()
            try:
                yield
            finally:
                if stream is not None and self.state.weights_valid:
                    stream.resume()

    # -- forward-only work ------------------------------------------------------------------
    def sequence_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-probability of every token after the first, for given token sequences; forward
        passes in micro-batches of `infer_batch_size`."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        with self._foreground():
            self.state.require_serving("compute log-probabilities", self.name)
            return self._sequence_logprobs(sequences, params)

    def _sequence_logprobs(self, sequences, params) -> list[list[float]]:
        out: list[list[float]] = []
        bs = self.role.infer_batch_size
        for start in range(0, len(sequences), bs):
            chunk = [list(s) for s in sequences[start:start + bs]]
            for seq, res in zip(chunk, self.llm.generate([{"prompt_token_ids": s} for s in chunk], params,
                                                         use_tqdm=False)):
                out.append([d[t].logprob for d, t in zip(res.prompt_logprobs[1:], seq[1:])])
        return out

    # -- weights --------------------------------------------------------------------------
    def update_weights(self, named_tensors, partial: bool = False, verify: bool | None = None,
                       timeout_s: float | None = None) -> int:
        """Load `(name, tensor)` pairs in Hugging Face naming into the running engine; returns the new
        weight version.

        A list or dict is checked whole before anything is written (a wrong name or shape leaves the
        previous weights in place). A generator is streamed in buckets of `weight_update_bucket_bytes`
        so the sender materializes one bucket at a time; a problem found mid-stream, or the deadline
        passing, leaves the weights invalid and the engine refuses to generate until a complete update.
        """
        with self._lock:
            self.begin_update(partial, verify, timeout_s)
            if isinstance(named_tensors, dict):
                named_tensors = list(named_tensors.items())
            try:
                if isinstance(named_tensors, (list, tuple)):
                    validate_all(list(named_tensors), self._update.layout, self._update.optional,
                                 self._update.complete)
                for bucket in buckets(named_tensors, self.options.weight_update_bucket_bytes):
                    self.load_bucket(bucket)
                return self.finish_update()
            except BaseException as e:
                self.abort_update(e)
                raise

    def begin_update(self, partial: bool = False, verify: bool | None = None, timeout_s: float | None = None):
        """Start a bucket-by-bucket update (`load_bucket`..., then `finish_update`); for senders in
        other processes, which ship one bucket at a time."""
        with self._lock:
            self.state.require_weight_memory(self.name)
            if partial and not self.state.weights_valid:
                raise WeightUpdateError(f"{self.name}: a partial update cannot repair invalid weights "
                                        f"({self.state.invalid_reason}); send all of them")
            layout, optional = self._weight_layout()
            timeout_s = self.options.weight_update_timeout_s if timeout_s is None else timeout_s
            self._update = UpdateSession(layout, optional, complete=not partial,
                                         verify=self.options.verify_weights if verify is None else verify,
                                         deadline=time.monotonic() + timeout_s)
            self._update_started = time.perf_counter()
            if self._stream is not None:  # samples in flight stop here and go on with the new weights
                self._stream.pause()
            self._end_transfer()  # a session left open by an update that was never finished
            self._sync.start_weight_update()
            self._transfer_open = True

    def load_bucket(self, bucket: list) -> None:
        """One bucket of tensors in this process: checked, then handed to the worker through the
        protocol's `update_weights` (the tensors travel as they are)."""
        with self._lock:
            session = self._require_update()
            session.check_bucket(bucket)
            bucket = [(n, t.detach()) for n, t in bucket]
            self._send_bucket(shm_transfer.local_update_info(bucket, session.verify), bucket)

    def load_shm_bucket(self, update_info: dict) -> None:
        """One bucket a sender wrote into shared memory (`shm_transfer.SegmentPool.write`): checked
        from its description, then the worker maps the segment."""
        with self._lock:
            session = self._require_update()
            described = shm_transfer.described_bucket(update_info)
            session.check_bucket(described, sent=shm_transfer.sent_checksum(update_info))
            self._send_bucket(update_info, described)

    def load_packed_bucket(self, arrays, specs) -> None:
        """`load_bucket` for a bucket packed by `transport.pack_bucket` in another process."""
        self.load_bucket(unpack_bucket(arrays, specs))

    def _send_bucket(self, update_info: dict, bucket: list) -> None:
        session = self._require_update()
        session.written = True  # a bucket that fails in the worker may be loaded in part
        try:
            self._sync.update_weights(update_info)
        except BaseException:
            self._transfer_open = False  # vLLM's worker ends its session when a bucket fails
            raise
        session.record(bucket, self._sync.receipt())

    def finish_update(self) -> int:
        with self._lock:
            return self._finish_update()

    def _finish_update(self) -> int:
        session = self._require_update()
        session.check_end()
        self._sync.finish_weight_update(str(self.weight_version + 1))  # also re-packs a tied lm_head
        self._transfer_open = False
        self.llm.reset_prefix_cache()  # no KV computed with the old weights may be reused
        self.weight_version += 1
        if session.complete:
            self.state.weights_valid, self.state.invalid_reason = True, ""
        self._update = None
        if self._stream is not None:
            self._stream.resume()
        log.info("%s: weights updated to version %d (%.1f MiB in %.3f s%s)", self.name, self.weight_version,
                 session.nbytes / 2**20, time.perf_counter() - self._update_started,
                 ", checksum verified" if session.verify else "")
        return self.weight_version

    def adopt_weight_version(self, version: int) -> None:
        """Number the current weights `version` (a resumed run continues its count)."""
        self.weight_version = version
        self._sync.set_weight_version(str(version))

    def status(self) -> dict:
        return {"weight_version": self.weight_version, "state": self.state.name}

    def abort_update(self, error: BaseException) -> None:
        """End a failed update: weights that were partly written are marked invalid."""
        with self._lock:
            self._abort_update(error)

    def _abort_update(self, error: BaseException) -> None:
        session, self._update = self._update, None
        self._end_transfer()
        if self._stream is not None and self.state.weights_valid and not (session and session.written):
            self._stream.resume()  # nothing was written: the samples go on with the weights they had
        if session is None or not session.written:
            if isinstance(error, WeightUpdateError) and "nothing was written" not in str(error):
                error.args = (f"{self.name}: weight update refused, nothing was written:\n{error}",)
            return
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.state.invalidate(f"the last weight update failed half-way ({first})")
        log.error("%s: weight update failed after writing some weights; generation is refused until a "
                  "complete update: %s", self.name, error)
        if isinstance(error, WeightUpdateError):
            error.args = (f"{self.name}: weight update failed, weights now invalid:\n{error}",)

    def _end_transfer(self) -> None:
        """Close the worker's update session after a failure (the protocol's only way is `finish`;
        the weights it leaves are marked invalid by the caller when some were written)."""
        if self._transfer_open:
            self._transfer_open = False
            try:
                self._sync.finish_weight_update()
            except Exception as e:  # the engine may be what failed; the original error is what matters
                log.warning("%s: could not close the worker's weight-update session: %s", self.name, e)

    def _require_update(self):
        if self._update is None:
            raise EngineStateError(f"{self.name}: no weight update in progress; call begin_update() first")
        return self._update

    def _weight_layout(self):
        if self._layout is None:
            layout = expected_layout(self.model_path, self.role.model_args.trust_remote_code)
            self._layout = (layout, tied_names(layout, self.model_path))
        return self._layout

    # -- sleep and wake -------------------------------------------------------------------
    def sleep(self, level: int | None = None) -> list[dict]:
        """Release memory between generations: level 1 the KV cache, level 2 the weights too
        (the next generation then needs `wake_up()` and a weight update). Returns what was measured,
        one report per engine (here one; `{}` when already asleep)."""
        return [self._sleep(level)]

    def _sleep(self, level: int | None) -> dict:
        level = level or self.options.sleep_level
        if level not in (1, 2):
            raise ValueError(f"sleep level {level!r} is not allowed: use 1 or 2")
        with self._lock:
            if self.state.asleep_level >= level:
                log.info("%s: already %s; sleep(%d) does nothing", self.name, self.state.name, level)
                return {}
            if not self.llm.reset_prefix_cache():
                raise EngineStateError(f"{self.name}: cannot sleep while requests hold KV blocks")
            expected = (self.kv_cache_resident_bytes() if self.state.kv_cache else 0) + (
                self.weight_bytes() if level == 2 else 0)
            before, started = self._memory_in_use(), time.perf_counter()
            if self.platform == "cpu":
                self.llm.collective_rpc(vllm_compat.worker_cpu_sleep, args=(level,))
            else:
                self.llm.sleep(level=level)
            self.state.kv_cache, self.state.asleep_level = False, level
            if level == 2:
                self.state.weights = False
                self.state.invalidate("the weights were released by sleep level 2")
            report = {"level": level, "seconds": time.perf_counter() - started, "expected_bytes": expected,
                      "released_bytes": before - self._memory_in_use()}
            self._check_release(report)
            return report

    def wake_up(self, tags: Sequence[str] | None = None) -> list[dict]:
        """Bring back the KV cache and weight memory (`tags` stages it: ["weights"], update, then
        ["kv_cache"], so old weights, new weights and the KV cache are never held at once). One
        report per engine, as `sleep`."""
        return [self._wake_up(tags)]

    def _wake_up(self, tags: Sequence[str] | None) -> dict:
        tags = list(tags or ("weights", "kv_cache"))
        unknown = set(tags) - {"weights", "kv_cache"}
        if unknown:
            raise ValueError(f"wake_up tags {sorted(unknown)} are not allowed: use 'weights' and/or 'kv_cache'")
        with self._lock:
            started = time.perf_counter()
            todo = [t for t in tags if not getattr(self.state, t)]
            if not todo:
                return {}
            if self.platform == "cpu":
                self.llm.collective_rpc(vllm_compat.worker_cpu_wake, args=(todo,))
            else:
                self.llm.wake_up(tags=todo)
            for t in todo:
                setattr(self.state, t, True)
            if self.state.kv_cache and self.state.weights:
                self.state.asleep_level = 0
            return {"tags": todo, "seconds": time.perf_counter() - started}

    def kv_cache_bytes(self) -> int:
        return self.llm.collective_rpc(vllm_compat.worker_kv_cache_bytes)[0]

    def kv_cache_resident_bytes(self) -> int:
        """What a sleep can release of the KV cache: on CPU its pages in memory now (`kv_cache_bytes`
        after a wake-up only once generation has touched them all)."""
        if self.platform != "cpu":
            return self.kv_cache_bytes()
        return self.llm.collective_rpc(vllm_compat.worker_kv_cache_resident_bytes)[0]

    def weight_bytes(self) -> int:
        """Size of the model's weights in the engine's dtype (on CPU the kernels hold packed copies,
        so the parameters themselves do not show it)."""
        layout, tied = self._weight_layout()
        per_element = 4 if self.role.model_args.dtype == "fp32" else 2
        return sum(math.prod(spec.shape) for name, spec in layout.items() if name not in tied) * per_element

    def _memory_in_use(self) -> int:
        """Resident memory of this process (CPU) or memory in use on the device (GPU)."""
        if self.platform == "cpu":
            import psutil

            return psutil.Process().memory_info().rss
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def _check_release(self, report: dict) -> None:
        released, expected = report["released_bytes"], report["expected_bytes"]
        log.info("%s: asleep at level %d in %.3f s, released %.1f MiB of %.1f MiB expected", self.name,
                 report["level"], report["seconds"], released / 2**20, expected / 2**20)
        # below a few MiB the process's other allocations move its RSS more than the release itself
        if expected >= 16 << 20 and released < 0.5 * expected:
            cause = ("the allocator kept the freed pages, or something else still references the KV cache"
                     if self.platform == "cpu" else "vLLM's sleep mode may be off (enable_sleep_mode) or another "
                     "object holds the memory")
            log.warning("%s: sleep released only %.1f MiB of the %.1f MiB expected; likely cause: %s",
                        self.name, released / 2**20, expected / 2**20, cause)

    def to_batch(self, results: list[PromptResult]):
        """Results as padded tensors for a trainer (see `results.to_padded_batch`)."""
        pad = self.tokenizer.pad_token_id
        return to_padded_batch(results, pad if pad is not None else self.tokenizer.eos_token_id)

    # -- life cycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the engine and free its memory; safe to call twice."""
        if self._stream is not None:
            self._stream.close()
        llm, self._llm = self._llm, None
        if llm is not None:
            vllm_compat.shutdown_engine(llm)
            log.info("%s: vLLM engine closed", self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _to_sample(c) -> Sample:
    lps = [d[t].logprob for d, t in zip(c.logprobs, c.token_ids)] if c.logprobs is not None else None
    return Sample(list(c.token_ids), c.text, c.finish_reason or "length", lps)

"""Generation that runs on while the caller does other work (the asynchronous pipeline).

Groups of samples go in with `submit`; a background thread steps the vLLM engine; finished groups
come out with `collect`, each exactly once. A weight update (or any foreground engine call) `pause`s
the samples in flight: each is aborted in vLLM and keeps what it generated; `resume` continues it from
prompt + those tokens with the remaining token budget (partial rollout, as ROLL and OpenRLHF do), so
the continuation's KV cache is computed with the weights of the moment. Every token records the weight
version that produced it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from vroll.strategy.results import PromptResult, Sample
from vroll.strategy.vllm_compat import set_thread_count

log = logging.getLogger(__name__)


class EngineLock:
    """The engine's lock: one engine call at a time (vLLM's engine is not thread-safe). The stream's
    thread holds it step after step and yields between steps to any caller waiting for it."""

    def __init__(self):
        self._lock = threading.RLock()
        self.cond = threading.Condition(self._lock)
        self._waiting = 0
        self._count = threading.Lock()

    def __enter__(self):
        with self._count:
            self._waiting += 1
        self._lock.acquire()
        with self._count:
            self._waiting -= 1
        return self

    def __exit__(self, *exc):
        self.cond.notify_all()
        self._lock.release()

    def yield_to_callers(self) -> None:
        """Let every caller waiting for the lock have it (called with the lock held)."""
        while self._waiting:
            self.cond.wait(0.05)


@dataclass(eq=False)
class StreamSample:
    """One sample of a group: its tokens so far and the weight version of each."""

    group: int  # the key of its group
    prompt_ids: list[int]
    seed: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # vLLM's detokenized text, delta by delta (a resumed leg continues from its prompt's tokens)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    request_id: str | None = None  # vLLM's request for the current leg
    legs: int = 0  # how many times it was started (1 + the times it was resumed)


@dataclass(eq=False)
class StreamGroup:
    """A prompt's group of samples, submitted together and collected together."""

    key: int  # the caller's id for the group
    prompt_ids: list[int]
    samples: list[StreamSample]
    version: int  # the engine's weight version when it was submitted
    generating_args: object  # vroll's GeneratingArgs for its samples

    @property
    def done(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)


class RolloutStream:
    """The background generation of one in-process vLLM engine. `version()` gives the engine's
    current weight version; `params(g, seed, generated)` builds vLLM's sampling parameters for a
    sample `generated` tokens in."""

    def __init__(self, llm, lock: EngineLock, version, params, name: str, threads: int):
        self.llm, self.lock, self.version, self.params, self.name = llm, lock, version, params, name
        self.threads = threads  # torch's thread count where the engine was built (CPU kernels check it)
        self._groups: dict[int, StreamGroup] = {}
        self._live: dict[str, StreamSample] = {}  # request id -> sample generating now
        self._paused: list[StreamSample] = []
        self._finished: list[int] = []  # group keys, in the order they finished
        self._done_count = 0  # groups finished so far; `_progress` is notified when it grows
        self._progress = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None  # why the loop stopped, if it failed
        self._thread: threading.Thread | None = None
        self.stats = {"idle_s": 0.0, "paused_s": 0.0, "resumed_samples": 0, "tokens": 0}
        self._paused_at: float | None = None

    # -- what the caller asks ----------------------------------------------------------------
    def submit(self, keys: list[int], prompts: list[list[int]], g, seeds: list[int]) -> None:
        """Start a group of `g.num_return_sequences` samples per prompt; `seeds[i]` seeds prompt i's
        group (sample j uses seed + j, as vLLM seeds the n samples of one request)."""
        with self.lock:
            for key, ids, seed in zip(keys, prompts, seeds):
                if key in self._groups:
                    raise ValueError(f"{self.name}: group {key} was already submitted")
                samples = [StreamSample(key, list(ids), seed + j)
                           for j in range(g.num_return_sequences)]
                self._groups[key] = StreamGroup(key, list(ids), samples, self.version(), g)
                for s in samples:
                    if self._paused_at is None:
                        self._start(s)
                    else:  # a weight update is under way: the samples start when it ends
                        self._paused.append(s)
            self._ensure_thread()
            self.lock.cond.notify_all()

    def collect(self, min_groups: int = 1, wait_s: float = 0.0) -> list[PromptResult]:
        """Finished groups not collected before, oldest first; waits up to `wait_s` for at least
        `min_groups` of them (fewer when the time runs out)."""
        deadline = time.monotonic() + wait_s
        while True:
            with self.lock:  # a counted caller: the loop yields to it between steps
                if self._error is not None:
                    raise RuntimeError(f"{self.name}: background generation failed: {self._error}") from self._error
                seen = self._done_count
                if len(self._finished) >= min_groups or self._closed or time.monotonic() >= deadline:
                    keys, self._finished = self._finished, []
                    return [self._result(self._groups.pop(k)) for k in keys]
            with self._progress:  # not the engine's lock: waiting here never holds the loop up
                self._progress.wait_for(lambda: self._done_count != seen or self._closed,
                                        max(deadline - time.monotonic(), 0))

    def drop(self, keys: list[int]) -> int:
        """Forget groups (too stale to use): their samples in flight are aborted. Returns how many
        groups were dropped."""
        with self.lock:
            dropped = [self._groups.pop(k) for k in keys if k in self._groups]
            gone = {gr.key for gr in dropped}
            ids = [rid for rid, s in self._live.items() if s.group in gone]
            if ids:
                self.llm.llm_engine.abort_request(ids)
            for rid in ids:
                del self._live[rid]
            self._paused = [s for s in self._paused if s.group not in gone]
            self._finished = [k for k in self._finished if k in self._groups]
            return len(dropped)

    def report(self) -> dict:
        """What the stream did since the last report: seconds idle (nothing to generate), seconds
        paused (weight updates, foreground calls), samples resumed after a pause, tokens generated."""
        with self.lock:
            out, self.stats = self.stats, {k: 0 if isinstance(v, int) else 0.0 for k, v in self.stats.items()}
            return out

    # -- pausing for a weight update or a foreground call ------------------------------------
    def pause(self) -> int:
        """Abort every sample in flight, keeping its tokens (called with the lock held). Returns how
        many were paused."""
        if self._paused_at is None:
            self._paused_at = time.perf_counter()
        if self._live:
            self.llm.llm_engine.abort_request(list(self._live))
            self._paused.extend(self._live.values())
            self._live.clear()
        return len(self._paused)

    def resume(self) -> None:
        """Continue the paused samples on the engine's current weights (called with the lock held)."""
        if self._paused_at is None:
            return
        self.stats["paused_s"] += time.perf_counter() - self._paused_at
        self._paused_at = None
        paused, self._paused = self._paused, []
        for s in paused:
            if s.tokens:
                self.stats["resumed_samples"] += 1
            self._start(s)
        self.lock.cond.notify_all()

    @property
    def active(self) -> bool:
        return bool(self._live or self._paused)

    def close(self) -> None:
        with self.lock:
            self._closed = True
            if self._live:
                self.llm.llm_engine.abort_request(list(self._live))
                self._live.clear()
        self._tell_progress()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _tell_progress(self) -> None:
        with self._progress:
            self._done_count += 1
            self._progress.notify_all()

    # -- the background loop -----------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-stream", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            set_thread_count(self.threads)  # a new thread has OpenMP's default, not the engine's count
            with self.lock:
                while not self._closed:
                    if not self._live:  # nothing in flight (or paused): wait for work
                        started = time.perf_counter()
                        self.lock.cond.wait(0.5)
                        if self._paused_at is None:
                            self.stats["idle_s"] += time.perf_counter() - started
                        continue
                    self._absorb(self.llm.llm_engine.step())
                    self.lock.cond.notify_all()
                    self.lock.yield_to_callers()
        except BaseException as e:  # the engine failed: callers of collect get the error, not a wait
            log.exception("%s: generation loop failed", self.name)
            self._closed, self._error = True, e
            self._tell_progress()

    def _start(self, s: StreamSample) -> None:
        """Add the sample's next leg to vLLM: prompt + tokens so far, the budget that is left."""
        s.legs += 1
        s.request_id = f"{id(s):x}-{s.legs}"
        seed = s.seed if s.legs == 1 else (s.seed * 1_000_003 + len(s.tokens)) & 0x3FFFFFFF
        self.llm.llm_engine.add_request(s.request_id, {"prompt_token_ids": s.prompt_ids + s.tokens},
                                        self.params(self._groups[s.group].generating_args, seed, len(s.tokens)))
        self._live[s.request_id] = s

    def _absorb(self, outputs) -> None:
        version = self.version()
        for out in outputs:
            s = self._live.get(out.request_id)
            if s is None:  # a request aborted since this step began
                continue
            c = out.outputs[0]
            new = list(c.token_ids)
            s.tokens += new
            s.text += c.text
            s.versions += [version] * len(new)
            if c.logprobs is not None:
                s.logprobs += [d[t].logprob for d, t in zip(c.logprobs, new)]
            self.stats["tokens"] += len(new)
            if out.finished:
                s.finish_reason = c.finish_reason or "length"
                del self._live[out.request_id]
                if self._groups[s.group].done:
                    self._finished.append(s.group)
                    self._tell_progress()

    def _result(self, gr: StreamGroup) -> PromptResult:
        samples = [Sample(s.tokens, s.text, s.finish_reason, s.logprobs if len(s.logprobs) == len(s.tokens) else None,
                          s.versions)
                   for s in gr.samples]
        return PromptResult(index=gr.key, prompt_token_ids=gr.prompt_ids, samples=samples,
                            weight_version=gr.version)

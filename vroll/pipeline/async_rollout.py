"""ROLL's `async_generation_ratio`: the engine generates the rollouts of the next steps while the
trainer trains on this one.

By step t the prompts of steps up to t + ratio have been handed to the engine (ROLL's budget of
(ratio + t) x rollout_batch_size prompts). Weight updates reach the engine while it generates: its
samples pause and continue on the new weights (partial rollout), each token keeping the weight version
that produced it. A group that started more than `ratio` weight versions before the trainer's current
weights is too stale: it is dropped, counted, and replaced by a fresh prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vroll.pipeline.dataset import PromptRecord, PromptSampler
from vroll.strategy.results import PromptResult

KEYS_PER_STEP = 1_000_000  # a group's key is step x this + its position: unique over the run


@dataclass
class Submitted:
    """The prompts handed to the engine for one step, and the sampler's state before they were drawn
    (what a checkpoint saved before this step records, so a resumed run draws them again)."""

    records: list[PromptRecord]
    keys: list[int]
    sampler_state: dict


def staleness(results: list[PromptResult], version: int) -> torch.Tensor:
    """Per token: how many weight versions behind `version` the weights that produced it are."""
    return torch.tensor([version - v for r in results for s in r.samples for v in s.token_versions], dtype=torch.float)


class RolloutsAhead:
    """The engine side of the asynchronous loop, as the loop sees it: `take(step)` waits for a step's
    groups and keeps the engine `ratio` steps ahead (`fill`)."""

    def __init__(self, engine, sampler: PromptSampler, ratio: int, batch_size: int, generating_args, max_steps: int,
                 timeout_s: float):
        self.engine, self.sampler, self.ratio = engine, sampler, ratio
        self.batch_size, self.g, self.max_steps, self.timeout_s = batch_size, generating_args, max_steps, timeout_s
        self.submitted: dict[int, Submitted] = {}
        self.last_submitted: int | None = None
        self.ready: dict[int, PromptResult] = {}  # collected, not yet taken, by key
        self.extra = 0  # replacement prompts drawn so far (their keys follow the step's)

    def fill(self, step: int) -> None:
        """Hand the engine the prompts of every step up to `step + ratio` not handed over yet."""
        first = step if self.last_submitted is None else self.last_submitted + 1
        for s in range(first, min(step + self.ratio, self.max_steps) + 1):
            state = self.sampler.state_dict()
            records = self.sampler.next_batch(self.batch_size)
            keys = [s * KEYS_PER_STEP + i for i in range(len(records))]
            # seeded as the synchronous loop seeds step s: the same samples when nothing lags
            self.engine.submit(keys, [r.prompt_ids for r in records], self.g, call=s,
                               seed_indices=list(range(len(records))))
            self.submitted[s] = Submitted(records, keys, state)
            self.last_submitted = s

    def sampler_state_before(self, step: int) -> dict:
        """The sampler's state before the prompts of `step` were drawn (now, if they were not yet)."""
        return self.submitted[step].sampler_state if step in self.submitted else self.sampler.state_dict()

    def take(self, step: int, version: int) -> tuple[list[PromptRecord], list[PromptResult], dict]:
        """The step's prompts and their groups, once all have finished; groups started more than
        `ratio` versions before `version` (the trainer's) are dropped and replaced by fresh prompts.
        Then the engine gets the prompts of step + ratio: it generates them while the trainer trains
        (handed over after collecting, so that their first engine step does not delay the collection)."""
        if step not in self.submitted:  # the first step of a run (or of a resumed one)
            self.fill(step)
        sub = self.submitted.pop(step)
        records, keys = list(sub.records), list(sub.keys)
        dropped = 0
        while True:
            self._wait_for(keys)
            stale = [i for i, k in enumerate(keys) if version - self.ready[k].weight_version > self.ratio]
            if not stale:
                break
            dropped += len(stale)
            for i in stale:
                self.ready.pop(keys[i])
                records[i] = self.sampler.next_batch(1)[0]
                self.extra += 1
                keys[i] = step * KEYS_PER_STEP + self.batch_size + self.extra
            self.engine.submit([keys[i] for i in stale], [records[i].prompt_ids for i in stale], self.g, call=step,
                               seed_indices=[keys[i] for i in stale])
        results = [self.ready.pop(k) for k in keys]
        for i, r in enumerate(results):
            r.index = i
        lag = staleness(results, version)
        metrics = {"async/dropped_groups": float(dropped), "async/staleness_mean": float(lag.mean()),
                   "async/staleness_max": float(lag.max()),
                   **{f"async/engine_{k}": float(v) for k, v in self.engine.stream_report().items()}}
        self.fill(step)  # last: the engine takes a while to add the requests, and answers nothing meanwhile
        return records, results, metrics

    def _wait_for(self, keys: list[int]) -> None:
        """Collect until every key has its group; an engine that finishes nothing for `timeout_s`
        (its `engine_call_timeout_s`) is named."""
        missing = [k for k in keys if k not in self.ready]
        last = time.monotonic()
        while missing:
            got = self.engine.collect(min_groups=1, wait_s=1.0)
            for r in got:
                self.ready[r.index] = r
            missing = [k for k in missing if k not in self.ready]
            if got:
                last = time.monotonic()
            elif time.monotonic() - last > self.timeout_s:
                raise TimeoutError(f"actor_infer: no rollout finished in {self.timeout_s:g} s "
                                   f"({len(missing)} group(s) of this step outstanding; engine_call_timeout_s)")

    def close(self) -> None:
        """Forget what was handed over and not taken (the run ends)."""
        keys = [k for sub in self.submitted.values() for k in sub.keys]
        if keys:
            self.engine.drop(keys)
        self.submitted.clear()

    def __enter__(self):
        return self

    def __exit__(self, failed, *exc) -> None:
        """Close when the run ends; when it fails, ask the engine nothing (it may be what failed): closing
        the engine next stops its generation."""
        if failed is None:
            self.close()
        else:
            self.submitted.clear()


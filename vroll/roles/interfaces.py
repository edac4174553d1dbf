"""What the pipeline may ask of each role, whatever runs it and wherever it runs.

In-process backends (`vroll.strategy`) and Ray-backed groups (`ray_engines`, `ray_trainer`) satisfy
these completely, with the same return types. Distinct contracts have distinct names: a forward-only
model scores token lists (`sequence_logprobs`), a trainer scores padded tensors (`batch_logprobs`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import torch

from vroll.config.schema import GeneratingArgs
from vroll.strategy.results import PromptResult


@runtime_checkable
class ForwardModel(Protocol):
    """Forward-only work on given token sequences (the reference role; an engine can serve it too)."""

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """log p of every token after the first, per sequence, in input order."""

    def close(self) -> None: ...


@runtime_checkable
class ScoringModel(Protocol):
    """A reward model: one score per whole sequence."""

    tokenizer: Any

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]: ...

    def close(self) -> None: ...


@runtime_checkable
class GenerationEngine(ForwardModel, Protocol):
    """The rollout role (actor_infer): generates, takes new weights, sleeps while others work."""

    weight_version: int

    def generate(self, prompts: Sequence[Any], generating_args: GeneratingArgs | None = None,
                 prompt_overflow: str | None = None, use_tqdm: bool = False,
                 call: int | None = None) -> list[PromptResult]:
        """Samples for each prompt, in input order; `call` numbers the generation for the seeds."""

    def update_weights(self, named_tensors, partial: bool = False, verify: bool | None = None,
                       timeout_s: float | None = None) -> int:
        """Load `(name, tensor)` pairs in Hugging Face naming; returns the new weight version."""

    def adopt_weight_version(self, version: int) -> None: ...

    def sleep(self, level: int | None = None) -> list[dict]:
        """Release memory (level 1: KV cache, 2: weights too); one report per engine."""

    def wake_up(self, tags: Sequence[str] | None = None) -> list[dict]:
        """Bring memory back (`tags`: "weights", "kv_cache"); one report per engine."""


@runtime_checkable
class StreamingEngine(GenerationEngine, Protocol):
    """An engine that generates in the background while the trainer works (the asynchronous
    pipeline): weight updates pause its samples and continue them on the new weights."""

    def submit(self, keys: Sequence[int], prompts: Sequence[Sequence[int]], generating_args: GeneratingArgs,
               call: int, seed_indices: Sequence[int] | None = None) -> None:
        """Start a group of samples per prompt (token ids), named by `keys`, seeded as `generate`
        seeds prompt `seed_indices[i]` of call `call`."""

    def collect(self, min_groups: int = 1, wait_s: float = 0.0) -> list[PromptResult]:
        """Finished groups, each once (`index` is its key; tokens carry their weight versions)."""

    def drop(self, keys: Sequence[int]) -> int:
        """Stop and forget submitted groups; returns how many were still there."""

    def stream_report(self) -> dict:
        """Seconds idle and paused, samples resumed, tokens generated, since the last report."""


@runtime_checkable
class Trainer(Protocol):
    """The training role (actor_train): owns the weights, the optimiser and their checkpoints."""

    world_size: int
    tokenizer: Any

    def batch_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                       batch_size: int | None = None, prompt_width: int | None = None,
                       disable_adapter: bool = False) -> torch.Tensor:
        """Per-token log-probabilities [B, L-1] of padded sequences; `prompt_width`: the columns before
        every row's response, so that rows repeating a prompt share its pass; `disable_adapter`: the
        base model's, LoRA's adapters off (a LoRA trainer only)."""

    def train_step(self, micro_batches: list[dict], loss_fn: Callable, temperature: float = 1.0) -> dict:
        """Gradient accumulation over the micro-batches, one optimiser step; returns metrics."""

    def named_weights(self, names: list[str] | None = None, dtype: torch.dtype | None = None
                      ) -> Iterator[tuple[str, torch.Tensor]]: ...

    def save(self, folder, with_state: bool = True) -> None: ...

    def load_state(self, folder) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Critic(Protocol):
    """The value model of GAE (critic): per-token values, trained by regression on the returns."""

    world_size: int

    def batch_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     batch_size: int | None = None) -> torch.Tensor:
        """Per-token values [B, L-1] of padded sequences, aligned with the log-probs."""

    def train_step(self, micro_batches: list[dict], loss_fn: Callable, temperature: float = 1.0) -> dict:
        """As the trainer's; `loss_fn(micro, values)`."""

    def save(self, folder, with_state: bool = True) -> None: ...

    def load_state(self, folder) -> None: ...

    def close(self) -> None: ...

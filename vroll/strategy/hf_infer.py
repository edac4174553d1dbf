"""The `hf_infer` strategy: a transformers model in inference mode for forward-only work.

Per-token log-probabilities of given sequences (the reference role) and scores of a
sequence-classification reward model, in micro-batches of `infer_batch_size`, left-padded with the
attention mask and position ids right, results in input order.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from vroll.config.dtypes import torch_dtype
from vroll.config.schema import RoleConfig
from vroll.models.logprobs import position_ids_from_mask, token_logprobs
from vroll.models.padding import left_pad
from vroll.models.paths import resolve_model_path

log = logging.getLogger(__name__)


class HfInferStrategy:
    def __init__(self, role: RoleConfig, seed: int | None = None, reward_model: bool = False):
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        self.role, self.name = role, role.name or "reference"
        path = resolve_model_path(role.model_args.model_name_or_path, f"{self.name}.model_args.model_name_or_path")
        cls = AutoModelForSequenceClassification if reward_model else AutoModelForCausalLM
        with torch.random.fork_rng():  # a score head the checkpoint lacks is initialised the same every run
            torch.manual_seed(0 if seed is None else seed)
            self.model = cls.from_pretrained(path, dtype=torch_dtype(role.model_args.dtype),
                                             trust_remote_code=role.model_args.trust_remote_code).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=role.model_args.trust_remote_code)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        log.info("%s: hf_infer model ready (%s, %s)", self.name, path, role.model_args.dtype)

    def _micro_batches(self, sequences: Sequence[Sequence[int]]):
        """Left-padded (input_ids, attention_mask, lengths) per micro-batch of infer_batch_size."""
        bs = self.role.infer_batch_size
        for start in range(0, len(sequences), bs):
            chunk = [list(s) for s in sequences[start:start + bs]]
            ids, mask = left_pad(chunk, self.pad_id)
            yield ids, mask, [len(s) for s in chunk]

    @torch.no_grad()
    def sequence_logprobs(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0) -> list[list[float]]:
        """Log-probability of every token after the first, per sequence, in input order."""
        out: list[list[float]] = []
        for ids, mask, lengths in self._micro_batches(sequences):
            lp = token_logprobs(self.model, ids, mask, temperature)
            width = ids.shape[1]
            out += [lp[i, width - n:].tolist() for i, n in enumerate(lengths)]
        return out

    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """A sequence-classification reward model's score of each whole sequence (first logit)."""
        out: list[float] = []
        for ids, mask, _ in self._micro_batches(sequences):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
            out += logits[:, 0].float().tolist()
        return out

    def close(self) -> None:
        self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

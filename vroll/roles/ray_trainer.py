"""A training role on several ranks: one Ray actor per rank, each running `Fsdp2TrainStrategy` on its
share of every batch (data parallel, parameters sharded by FSDP2 over the ranks' own process group).
Satisfies `Trainer` like one in-process trainer, so the RL loop and `vroll sft` do not know how many
ranks there are. The Ray plumbing is `vroll.cluster.ActorGroup`'s."""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import torch

from vroll.cluster.actors import ActorGroup, RoleFailure
from vroll.config.schema import RoleConfig
from vroll.models.paths import resolve_model_path
from vroll.roles.ray_role import RayRole

log = logging.getLogger(__name__)

TRAINER = "vroll.strategy.fsdp2_train:Fsdp2TrainStrategy"


class TrainerFailure(RoleFailure):
    """A trainer rank died or did not answer in time; names role, rank, node and the call."""


class RayTrainer(RayRole):
    """`ranks` Ray actors for one training role. The caller's batches are global: each micro-batch is
    split evenly across the ranks, and log-probs come back in input order."""

    def __init__(self, role: RoleConfig, ranks: int, platform: str, seed: int | None = None, total_steps: int = 1,
                 model_path: str | None = None, ray_address: str | None = None,
                 devices_per_node: int | None = None, call_timeout_s: float = 1800.0, value_model: bool = False):
        from transformers import AutoTokenizer

        self.name, self.world_size = role.name or "actor_train", ranks
        path = model_path or resolve_model_path(role.model_args.model_name_or_path,
                                                f"{self.name}.model_args.model_name_or_path")
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=role.model_args.trust_remote_code)
        # Ranks meet in collectives: one that fails leaves the others waiting, so any failure breaks all.
        self.group = ActorGroup(self.name, role.device_mapping, len(role.device_mapping) // ranks, platform,
                                label="rank", failure=TrainerFailure, call_timeout_s=call_timeout_s,
                                ray_address=ray_address, devices_per_node=devices_per_node, collective=True,
                                env=role.environment())
        try:
            init_method = self.group.call(self.group.members[:1], "rendezvous", lambda m: m.actor.rendezvous.remote())[0]
            self.group.build(TRAINER, lambda m: (role, seed, total_steps, path, m.placement.rank, ranks, init_method,
                                                 value_model))
        except BaseException:
            self.group.close()
            raise
        log.info("%s: fsdp2_train on %d ranks: %s", self.name, ranks,
                 "; ".join(self.group.where(m) for m in self.group.members))

    @property
    def node_ids(self) -> list[str]:
        return [m.node_id for m in self.group.members]

    def _shares(self, rows: int) -> list[slice]:
        size = rows // self.world_size
        return [slice(r * size, (r + 1) * size) for r in range(self.world_size)]

    def _even_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The rows padded to a multiple of the ranks (every rank must run the same number of
        forwards: the last row is repeated), and how many were real."""
        n = input_ids.shape[0]
        pad = -n % self.world_size
        if pad:
            input_ids = torch.cat([input_ids, input_ids[-1:].expand(pad, -1)])
            attention_mask = torch.cat([attention_mask, attention_mask[-1:].expand(pad, -1)])
        return input_ids, attention_mask, n

    # -- the trainer's interface -----------------------------------------------------------------
    def batch_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                       batch_size: int | None = None, prompt_width: int | None = None,
                       disable_adapter: bool = False) -> torch.Tensor:
        input_ids, attention_mask, n = self._even_rows(input_ids, attention_mask)
        shares = self._shares(input_ids.shape[0])
        parts = self.group.on_each("batch_logprobs", lambda m: (input_ids[shares[m.placement.rank]],
                                                                attention_mask[shares[m.placement.rank]],
                                                                temperature, batch_size, prompt_width,
                                                                disable_adapter))
        return torch.cat(parts)[:n]

    def batch_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     batch_size: int | None = None) -> torch.Tensor:
        input_ids, attention_mask, n = self._even_rows(input_ids, attention_mask)
        shares = self._shares(input_ids.shape[0])
        parts = self.group.on_each("batch_values", lambda m: (input_ids[shares[m.placement.rank]],
                                                              attention_mask[shares[m.placement.rank]], batch_size))
        return torch.cat(parts)[:n]

    def train_step(self, micro_batches: list[dict], loss_fn: Callable, temperature: float = 1.0) -> dict:
        """Each micro-batch (`world_size` x per_device_train_batch_size rows) is split evenly across the
        ranks; the loss's metrics are shares of step-wide sums, so the ranks' values add up."""
        for mb in micro_batches:
            rows = next(iter(mb.values())).shape[0]
            if rows % self.world_size:
                raise ValueError(f"{self.name}: a micro-batch of {rows} rows does not split over "
                                 f"{self.world_size} ranks")

        def mine(m):
            r = m.placement.rank
            return [{k: v[self._shares(v.shape[0])[r]] for k, v in mb.items()} for mb in micro_batches], loss_fn, \
                temperature

        results = self.group.on_each("train_step", mine)
        summed = {k: sum(r[k] for r in results) for k in results[0]}
        for same in [k for k in summed if k.endswith(("/grad_norm", "/lr", "/nonfinite"))]:  # equal on every rank
            summed[same] = results[0][same]
        return summed

    def named_weights(self, names: list[str] | None = None, dtype: torch.dtype | None = None,
                      bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights (all, or `names`), gathered by the ranks and shipped from rank 0 one bucket at a
        time, so neither rank 0 nor this process ever holds the whole model unsharded."""
        sizes = self.group.on_all("weight_sizes", what="listing weights", members=self.group.members[:1])[0]
        bucket, size = [], 0
        for name, nbytes in sizes:
            if names is not None and name not in names:
                continue
            if bucket and size + nbytes > bucket_bytes:
                yield from self.group.on_all("full_weights", bucket, dtype)[0].items()
                bucket, size = [], 0
            bucket.append(name)
            size += nbytes
        if bucket:
            yield from self.group.on_all("full_weights", bucket, dtype)[0].items()

    def save(self, folder, with_state: bool = True) -> None:
        self.group.on_all("save", str(folder), with_state)

    def load_state(self, folder) -> None:
        self.group.on_all("load_state", str(folder))

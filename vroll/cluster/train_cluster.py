"""A training role on several ranks: one Ray actor per rank, each running `Fsdp2TrainStrategy` on its
share of every batch (data parallel, parameters sharded by FSDP2 over the ranks' own process group).
Same interface as one trainer, so the RL loop and `vroll sft` do not know how many ranks there are."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterator

import torch

from vroll.cluster.placement import EnginePlacement, place_engines
from vroll.cluster.ray_session import alive_nodes, connect, missing_devices, release
from vroll.config.schema import RoleConfig

log = logging.getLogger(__name__)


class TrainerFailure(RuntimeError):
    """A trainer rank died or did not answer in time; names role, rank, node and the call."""


class TrainRankActor:
    """One rank, pinned to its devices before torch starts its threads."""

    def __init__(self, name: str, rank: int, local_devices: list[int], platform: str):
        if platform == "cpu":  # device ids name CPU cores: pin, and size torch's pool to them
            os.sched_setaffinity(0, set(local_devices))
            os.environ["OMP_NUM_THREADS"] = str(len(local_devices))
            torch.set_num_threads(len(local_devices))
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name}[{rank}] %(levelname)s: %(message)s")
        self.rank, self.strategy = rank, None

    def rendezvous(self) -> str:
        """An address for the ranks' process group, on this (rank 0's) node."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def start(self, role, seed, total_steps, model_path, world_size, init_method) -> dict:
        import ray

        from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy

        self.strategy = Fsdp2TrainStrategy(role, seed=seed, total_steps=total_steps, model_path=model_path,
                                           rank=self.rank, world_size=world_size, init_method=init_method)
        return {"node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid()}

    def call(self, method: str, *args, **kwargs):
        return getattr(self.strategy, method)(*args, **kwargs)

    def close(self) -> None:
        if self.strategy is not None:
            self.strategy.close()


class TrainCluster:
    """`trainer_ranks(role)` Ray actors for one training role. The caller's batches are global: each
    micro-batch is split evenly across the ranks, and log-probs come back in input order."""

    def __init__(self, role: RoleConfig, ranks: int, seed: int | None = None, total_steps: int = 1,
                 model_path: str | None = None, ray_address: str | None = None,
                 devices_per_node: int | None = None, platform: str = "cpu", call_timeout_s: float = 1800.0):
        import ray
        from transformers import AutoTokenizer

        from vroll.strategy.vllm_strategy import resolve_model_path

        self.name, self.world_size, self.call_timeout_s = role.name or "actor_train", ranks, call_timeout_s
        path = model_path or resolve_model_path(role.model_args.model_name_or_path,
                                                f"{self.name}.model_args.model_name_or_path")
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=role.model_args.trust_remote_code)
        self._ray = ray
        self._owns_ray = connect(ray_address)
        per_node = devices_per_node or (os.cpu_count() if platform == "cpu" else 8)
        self.placements = place_engines(role.device_mapping, len(role.device_mapping) // ranks, per_node)
        self.actors, self._broken = [], False
        self.where = [f"{self.name} rank {p.rank} (devices {list(p.devices)})" for p in self.placements]
        try:
            problem = missing_devices(self.name, self.placements, per_node, platform)
            if problem:
                raise TrainerFailure(problem)
            self.actors = [self._start_actor(p, platform) for p in self.placements]
            init_method = self._call(self.actors[:1], "rendezvous", lambda r, a: a.rendezvous.remote())[0]
            infos = self._call(self.actors, "start", lambda r, a: a.start.remote(
                role, seed, total_steps, path, ranks, init_method))
        except BaseException:
            self.close()
            raise
        self.where = [f"{self.name} rank {p.rank} (node {i['node']}, pid {i['pid']}, devices {list(p.devices)})"
                      for p, i in zip(self.placements, infos)]
        self.node_ids = [i["node_id"] for i in infos]
        log.info("%s: fsdp2_train on %d ranks: %s", self.name, ranks, "; ".join(self.where))

    def _start_actor(self, p: EnginePlacement, platform: str):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = alive_nodes()[p.node]
        env = {} if platform == "cpu" else {"CUDA_VISIBLE_DEVICES": ",".join(map(str, p.local))}
        # No Ray resources are claimed, as for engines: colocated roles share devices and take turns.
        return self._ray.remote(num_cpus=0, num_gpus=0, max_concurrency=1)(TrainRankActor).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            runtime_env={"env_vars": env},
        ).remote(self.name, p.rank, list(p.local), platform)

    def _call(self, actors: list, what: str, submit: Callable) -> list:
        """One call per rank, all in flight together (they meet in collectives). The first rank to fail
        is named at once: the others would wait for it in a collective, not return."""
        from ray.exceptions import RayActorError, RayTaskError

        refs = [submit(r, a) for r, a in enumerate(actors)]
        rank_of = {ref: r for r, ref in enumerate(refs)}
        deadline = time.monotonic() + self.call_timeout_s
        pending, out = list(refs), {}
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0.001))
            if not done:
                self._broken = True
                stuck = ", ".join(self.where[rank_of[ref]] for ref in pending)
                raise TrainerFailure(f"{stuck} did not answer within {self.call_timeout_s:.0f} s while {what}")
            ref = done[0]
            try:
                out[rank_of[ref]] = self._ray.get(ref)
            except RayActorError as err:
                self._broken = True
                raise TrainerFailure(f"{self.where[rank_of[ref]]} died while {what}: "
                                     f"{str(err).splitlines()[0]}") from None
            except RayTaskError as err:
                self._broken = True  # the other ranks may wait for this one in a collective
                raise err.as_instanceof_cause() from None
        return [out[r] for r in range(len(refs))]

    def _on_all(self, method: str, per_rank_args: list[tuple] | None = None, *args) -> list:
        """`method` of every rank's trainer, with its own arguments or the same `args` for all."""
        per_rank_args = per_rank_args or [args] * self.world_size
        return self._call(self.actors, method, lambda r, a: a.call.remote(method, *per_rank_args[r]))

    def _shares(self, rows: int) -> list[slice]:
        size = rows // self.world_size
        return [slice(r * size, (r + 1) * size) for r in range(self.world_size)]

    # -- the trainer's interface -----------------------------------------------------------------
    def compute_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                         batch_size: int | None = None) -> torch.Tensor:
        n = input_ids.shape[0]
        pad = -n % self.world_size  # every rank must run the same number of forwards: repeat the last row
        if pad:
            input_ids = torch.cat([input_ids, input_ids[-1:].expand(pad, -1)])
            attention_mask = torch.cat([attention_mask, attention_mask[-1:].expand(pad, -1)])
        shares = self._shares(input_ids.shape[0])
        parts = self._on_all("compute_logprobs", [(input_ids[s], attention_mask[s], temperature, batch_size)
                                                  for s in shares])
        return torch.cat(parts)[:n]

    def train_step(self, micro_batches: list[dict], loss_fn: Callable, temperature: float = 1.0) -> dict:
        """Each micro-batch (`world_size` x per_device_train_batch_size rows) is split evenly across the
        ranks; the loss's metrics are shares of step-wide sums, so the ranks' values add up."""
        for m in micro_batches:
            rows = next(iter(m.values())).shape[0]
            if rows % self.world_size:
                raise ValueError(f"{self.name}: a micro-batch of {rows} rows does not split over "
                                 f"{self.world_size} ranks")
        per_rank = []
        for r in range(self.world_size):
            mine = []
            for m in micro_batches:
                s = self._shares(next(iter(m.values())).shape[0])[r]
                mine.append({k: v[s] for k, v in m.items()})
            per_rank.append((mine, loss_fn, temperature))
        results = self._on_all("train_step", per_rank)
        summed = {k: sum(r[k] for r in results) for k in results[0]}
        for same in ("train/grad_norm", "train/lr"):  # global values, equal on every rank
            summed[same] = results[0][same]
        return summed

    def named_weights(self, names: list[str] | None = None, dtype: torch.dtype | None = None,
                      bucket_bytes: int = 256 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights (all, or `names`), gathered by the ranks and shipped from rank 0 one bucket at a
        time, so neither rank 0 nor this process ever holds the whole model unsharded."""
        sizes = self._call(self.actors[:1], "listing weights", lambda r, a: a.call.remote("weight_sizes"))[0]
        bucket, size = [], 0
        for name, nbytes in sizes:
            if names is not None and name not in names:
                continue
            if bucket and size + nbytes > bucket_bytes:
                yield from self._on_all("full_weights", None, bucket, dtype)[0].items()
                bucket, size = [], 0
            bucket.append(name)
            size += nbytes
        if bucket:
            yield from self._on_all("full_weights", None, bucket, dtype)[0].items()

    def save(self, folder, with_state: bool = True) -> None:
        self._on_all("save", None, str(folder), with_state)

    def load_state(self, folder) -> None:
        self._on_all("load_state", None, str(folder))

    def close(self) -> None:
        release(self.actors, self._owns_ray, polite=not self._broken)
        self.actors, self._owns_ray = [], False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


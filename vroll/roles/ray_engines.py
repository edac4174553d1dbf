"""A generation role served by several vLLM engines on Ray: data-parallel generation and scoring,
broadcast weight updates and sleep, and a restart that brings a lost engine back at the current
weights. The Ray plumbing (placement, pinning, deadlines, failures) is `vroll.cluster.ActorGroup`'s."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from vroll.cluster.actors import ActorGroup, Member, RoleFailure
from vroll.config.layout import devices_per_engine
from vroll.config.schema import GeneratingArgs, RoleConfig
from vroll.roles.ray_role import RayRole
from vroll.strategy.results import PromptResult
from vroll.strategy import shm_transfer
from vroll.strategy.transport import pack_bucket
from vroll.strategy.vllm_compat import INHERITED_ENGINE_VARS, current_platform_name
from vroll.strategy.weights import buckets

log = logging.getLogger(__name__)

VLLM = "vroll.strategy.vllm_strategy:VllmStrategy"


class EngineFailure(RoleFailure):
    """An engine of a role died or did not answer in time; names role, rank, node and the call."""


class RayEngines(RayRole):
    """`len(device_mapping) / devices_per_engine` engines for one role, each a Ray actor pinned to its
    devices. Satisfies `GenerationEngine` (and `ForwardModel`) like one in-process engine."""

    def __init__(self, role: RoleConfig, seed: int | None = None, platform: str | None = None,
                 ray_address: str | None = None, devices_per_node: int | None = None, backend: str = VLLM):
        """`backend`: the engine class each actor builds, as `module:Class` (imported there, after pinning)."""
        platform = platform or current_platform_name()
        self.role, self.seed, self.name, self.backend = role, seed, role.name or "actor_infer", backend
        self.weight_version = 0
        self._calls = 0
        self._replay: list[tuple[str, Any]] = []  # (transport, what it sent) since the last full update
        self.platform = platform
        self._segments = shm_transfer.SegmentPool()  # vroll_shm's shared memory, reused between updates
        self._holder: dict[int, int] = {}  # a submitted group's key -> the engine rank generating it
        self._submitting: tuple[list, dict] = ([], {})  # the last submit's members and calls in flight
        self.group = ActorGroup(self.name, role.device_mapping, devices_per_engine(role.strategy_args.backend_args),
                                platform, label="engine rank", failure=EngineFailure,
                                call_timeout_s=role.strategy_args.options.engine_call_timeout_s,
                                ray_address=ray_address, devices_per_node=devices_per_node,
                                drop_env=INHERITED_ENGINE_VARS, env=role.environment())
        try:
            self.group.build(self.backend, self._engine_args)
        except BaseException:
            self.group.close()
            raise
        log.info("%s: %d engine(s) ready: %s", self.name, len(self.engines),
                 ", ".join(f"rank {m.placement.rank} on {m.node_ip} devices {list(m.placement.local)}"
                           for m in self.engines))

    def _engine_args(self, m: Member) -> tuple:
        return self.role.model_copy(update={"device_mapping": list(m.placement.devices)}), self.seed

    @property
    def engines(self) -> list[Member]:
        return self.group.members

    # -- generation and scoring ---------------------------------------------------------------
    def generate(self, prompts: Sequence[Any], generating_args: GeneratingArgs | None = None,
                 prompt_overflow: str | None = None, use_tqdm: bool = False,
                 call: int | None = None) -> list[PromptResult]:
        """Split prompts across engines (balanced by expected work), results in input order. `call`
        numbers the generation for the seeds (default: the role's own count)."""
        g = generating_args or self.role.generating_args
        if call is None:  # one count for the role: seeds do not depend on the split
            call, self._calls = self._calls, self._calls + 1
        work = g.num_return_sequences * g.max_new_tokens
        shares = split_by_work(prompts, len(self.engines), lambda p: prompt_size(p) + work)
        busy = [(m, idx) for m, idx in zip(self.engines, shares) if idx]
        share = {id(m): idx for m, idx in busy}
        outs = self.group.on_each("generate", lambda m: ([prompts[i] for i in share[id(m)]], g, prompt_overflow,
                                                         False, share[id(m)], call),
                                  what="generating", members=[m for m, _ in busy], progress=use_tqdm)
        return _in_input_order(len(prompts), [idx for _, idx in busy], outs, renumber=True)

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Each engine scores a share of the sequences (balanced by length); results in input order."""
        shares = split_by_work(sequences, len(self.engines), len)
        busy = [(m, idx) for m, idx in zip(self.engines, shares) if idx]
        share = {id(m): idx for m, idx in busy}
        outs = self.group.on_each("sequence_logprobs", lambda m: ([sequences[i] for i in share[id(m)]],),
                                  what="computing log-probabilities", members=[m for m, _ in busy])
        return _in_input_order(len(sequences), [idx for _, idx in busy], outs)

    # -- generation in the background (the asynchronous pipeline) -----------------------------
    def submit(self, keys: Sequence[int], prompts: Sequence[Sequence[int]], generating_args: GeneratingArgs,
               call: int, seed_indices: Sequence[int] | None = None) -> None:
        """Start the groups on the engines, each engine taking a share balanced by groups pending."""
        pending = {m.placement.rank: 0 for m in self.engines}
        for rank in self._holder.values():
            pending[rank] = pending.get(rank, 0) + 1
        share: dict[int, list[int]] = {m.placement.rank: [] for m in self.engines}
        for i in range(len(keys)):
            rank = min(pending, key=pending.get)
            share[rank].append(i)
            pending[rank] += 1
        busy = [m for m in self.engines if share[m.placement.rank]]
        seeds = list(seed_indices or keys)
        self.settle_submissions()
        # not waited on: adding many requests takes the engine a while (input processing), and the
        # caller (the trainer) goes on meanwhile; the next engine call checks that it went well
        self._submitting = (busy, {id(m): m.actor.call.remote(
            "submit", [keys[i] for i in share[m.placement.rank]], [prompts[i] for i in share[m.placement.rank]],
            generating_args, call, [seeds[i] for i in share[m.placement.rank]]) for m in busy})
        for m in busy:
            self._holder.update({keys[i]: m.placement.rank for i in share[m.placement.rank]})

    def settle_submissions(self) -> None:
        """Wait for the last `submit` (with the group's deadline and liveness checks): its errors
        surface here."""
        members, refs = self._submitting
        self._submitting = ([], {})
        if members:
            self.group.call(members, "submitting prompts", lambda m: refs[id(m)])

    def collect(self, min_groups: int = 1, wait_s: float = 0.0) -> list[PromptResult]:
        """Finished groups from every engine holding some; each engine waits up to `wait_s` for one."""
        self.settle_submissions()
        busy = [m for m in self.engines if m.placement.rank in set(self._holder.values())]
        if not busy:
            return []
        outs = self.group.on_each("collect", lambda m: (1 if min_groups else 0, wait_s), what="collecting rollouts",
                                  members=busy)
        got = [r for out in outs for r in out]
        for r in got:
            self._holder.pop(r.index, None)
        return got

    def drop(self, keys: Sequence[int]) -> int:
        self.settle_submissions()
        by_rank: dict[int, list[int]] = {}
        for k in keys:
            if k in self._holder:
                by_rank.setdefault(self._holder.pop(k), []).append(k)
        members = [m for m in self.engines if m.placement.rank in by_rank]
        if not members:
            return 0
        return sum(self.group.on_each("drop", lambda m: (by_rank[m.placement.rank],), what="dropping stale groups",
                                      members=members))

    def stream_report(self) -> dict:
        """The engines' reports, summed."""
        total: dict = {}
        for rep in self.group.on_all("stream_report", what="reporting"):
            for k, v in rep.items():
                total[k] = total.get(k, 0) + v
        return total

    # -- weights, sleep ------------------------------------------------------------------------
    def update_weights(self, named_tensors, partial: bool = False, verify: bool | None = None,
                       timeout_s: float | None = None) -> int:
        """Stream the weights to every engine through vLLM's weight-transfer protocol (start, one
        update per bucket, finish with the version): on this node each bucket is written once into
        shared memory (`vroll_shm`); across nodes it is put in Ray's object store once. Either way
        the engines read it without a copy per engine."""
        if isinstance(named_tensors, dict):
            named_tensors = list(named_tensors.items())
        self.settle_submissions()
        transport = self.transport()
        checksum = verify if verify is not None else self.role.strategy_args.options.verify_weights
        self.group.on_all("begin_update", partial, verify, timeout_s, what="starting a weight update")
        sent = []
        try:
            for bucket in buckets(named_tensors, self.role.strategy_args.options.weight_update_bucket_bytes):
                sent.append(self._send_bucket(transport, bucket, checksum))
            versions = self.group.on_all("finish_update", what="finishing a weight update")
        except BaseException as err:
            reason = RuntimeError(str(err).splitlines()[0] if str(err) else type(err).__name__)
            for m in self.engines:  # end the update everywhere; engines that wrote weights mark them invalid
                m.actor.call.remote("abort_update", reason)
            self._segments.release(_written(sent))
            raise
        self.weight_version += 1
        if not partial:
            self._segments.recycle(_written(self._replay))
        self._replay = sent if not partial else self._replay + sent
        if len(set(versions)) != 1 or versions[0] != self.weight_version:
            self.group.on_all("adopt_weight_version", self.weight_version, what="aligning weight versions")
        return self.weight_version

    def transport(self) -> str:
        """`vroll_shm` when every engine runs on this (the driver's) node, else `object_store`; on
        GPUs vLLM's `nccl`/`ipc` are named (shm_transfer.choose_transport) but not built yet, and the
        object store carries the weights there."""
        here = self.group._ray.get_runtime_context().get_node_id()
        chosen = shm_transfer.choose_transport(self.platform, all(m.node_id == here for m in self.engines))
        if chosen not in (shm_transfer.BACKEND, "object_store"):
            log.warning("%s: weight transport %r is not built in vroll yet; using Ray's object store",
                        self.name, chosen)
            return "object_store"
        return chosen

    def _send_bucket(self, transport: str, bucket: list, checksum: bool, members: list[Member] | None = None):
        """Load one bucket on the engines; returns what a restarted engine needs to catch up on it."""
        if transport == shm_transfer.BACKEND:
            written = self._segments.write(bucket, checksum)
            try:
                self.group.on_all("load_shm_bucket", written.update_info(self._segments.live()),
                                  what="loading weights", members=members)
            except BaseException:
                self._segments.release([written])
                raise
            return transport, written
        arrays, specs = pack_bucket(bucket)
        ref = self.group._ray.put(arrays)
        self.group.on_all("load_packed_bucket", ref, specs, what="loading weights", members=members)
        return transport, (ref, specs)

    def adopt_weight_version(self, version: int) -> None:
        """Number the current weights `version` (a resumed run continues its count)."""
        self.weight_version = version
        self.group.on_all("adopt_weight_version", version, what="aligning weight versions")

    def sleep(self, level: int | None = None) -> list[dict]:
        return [r for rs in self.group.on_all("sleep", level, what=f"going to sleep (level {level})") for r in rs]

    def wake_up(self, tags: Sequence[str] | None = None) -> list[dict]:
        return [r for rs in self.group.on_all("wake_up", tags, what="waking up") for r in rs]

    def info(self) -> list[dict]:
        """Where each engine runs (node, pid, cores) and what it holds (weight version, state)."""
        return [{**where, **status} for where, status in zip(self.group.infos(), self.group.on_all("status"))]

    # -- failures ---------------------------------------------------------------------------
    def restart(self, rank: int) -> None:
        """Replace engine `rank` by a new one, brought to the role's current weight version."""
        new = self.group.replace(rank)
        self.group.build(self.backend, self._engine_args, members=[new])
        if self._replay:
            self.group.on_all("begin_update", False, None, None, what="starting the catch-up update", members=[new])
            for transport, held in self._replay:
                if transport == shm_transfer.BACKEND:  # the segments still hold these buckets
                    self.group.on_all("load_shm_bucket", held.update_info(self._segments.live()),
                                      what="catching up on weights", members=[new])
                else:
                    self.group.on_all("load_packed_bucket", *held, what="catching up on weights", members=[new])
            self.group.on_all("finish_update", what="finishing the catch-up update", members=[new])
        self.group.on_all("adopt_weight_version", self.weight_version, what="aligning weight versions", members=[new])
        log.info("%s: engine rank %d restarted on %s at weight version %d", self.name, rank, new.node_ip,
                 self.weight_version)


    def close(self) -> None:
        self._replay = []
        self._segments.close()
        super().close()


def _written(sent: list[tuple[str, Any]]) -> list:
    """The buckets of `sent` that travelled in shared memory."""
    return [held for transport, held in sent if transport == shm_transfer.BACKEND]


def prompt_size(p) -> int:
    """A prompt's rough token count (text, chat messages, token ids or a dict of one of those)."""
    if isinstance(p, dict):
        p = next(iter(p.values()))
    if isinstance(p, str):
        return len(p) // 4 + 1  # a rough token count, good enough to balance
    return sum(len(m.get("content", "")) // 4 + 4 for m in p) if p and isinstance(p[0], dict) else len(p)


def split_by_work(items: Sequence[Any], engines: int, cost) -> list[list[int]]:
    """Item indices per engine, balancing `cost(item)` greedily (largest first); each share keeps
    input order."""
    loads = [0] * engines
    shares: list[list[int]] = [[] for _ in range(engines)]
    for i in sorted(range(len(items)), key=lambda i: -cost(items[i])):
        k = loads.index(min(loads))
        shares[k].append(i)
        loads[k] += cost(items[i])
    return [sorted(s) for s in shares]


def _in_input_order(n: int, shares: list[list[int]], outs: list[list], renumber: bool = False) -> list:
    results: list = [None] * n
    for idx, out in zip(shares, outs):
        for i, r in zip(idx, out):
            if renumber:
                r.index = i
            results[i] = r
    return results

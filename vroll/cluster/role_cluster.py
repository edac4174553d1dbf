"""A role served by several engines on Ray: data-parallel generation, broadcast weight updates and
sleep, deadlines on every call, and a restart that brings a lost engine back at the current weights."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

from vroll.cluster.placement import EnginePlacement, place_engines
from vroll.cluster.ray_session import alive_nodes, connect, missing_devices, release
from vroll.cluster.transport import pack_bucket
from vroll.config.schema import GeneratingArgs, RoleConfig
from vroll.strategy.results import PromptResult
from vroll.strategy.vllm_args import devices_per_engine
from vroll.strategy.weights import buckets

log = logging.getLogger(__name__)


class EngineFailure(RuntimeError):
    """An engine of a role died or did not answer in time; names role, rank, node and the call."""


@dataclass
class Engine:
    placement: EnginePlacement
    actor: Any
    node_ip: str = "?"
    pid: int = 0

    def where(self, role: str) -> str:
        return f"{role} engine rank {self.placement.rank} (node {self.node_ip}, pid {self.pid}, " \
               f"devices {list(self.placement.devices)})"


class RoleCluster:
    """`len(device_mapping) / devices_per_engine` engines for one role, each a Ray actor pinned to its
    devices. Same interface as one strategy: generate, update_weights, sleep, wake_up, close."""

    def __init__(self, role: RoleConfig, seed: int | None = None, ray_address: str | None = None,
                 devices_per_node: int | None = None, call_timeout_s: float | None = None,
                 platform: str | None = None):
        import os

        import ray

        from vroll.strategy.vllm_compat import current_platform_name

        self.role, self.seed = role, seed
        self.name = role.name or "actor_infer"
        sc = role.strategy_args.strategy_config
        self.call_timeout_s = call_timeout_s or float(sc.get("engine_call_timeout_s", 1800.0))
        self.platform = platform or current_platform_name()
        self.weight_version = 0
        self._calls = 0
        self._replay: list[tuple[Any, Any, bool]] = []  # (bucket ref, specs, partial) since the last full update
        self._ray, self.engines = ray, []
        self._owns_ray = connect(ray_address)
        try:  # a role that cannot start leaves no engine, and no Ray it started, behind
            per_node = devices_per_node or (os.cpu_count() if self.platform == "cpu" else 8)
            self.placements = place_engines(role.device_mapping, devices_per_engine(sc), per_node)
            self._check_devices_exist(per_node)
            for p in self.placements:
                self.engines.append(self._start(p))
            self._wait_ready(self.engines)
        except BaseException:
            self.close()
            raise
        log.info("%s: %d engine(s) ready: %s", self.name, len(self.engines),
                 ", ".join(f"rank {e.placement.rank} on {e.node_ip} devices {list(e.placement.local)}"
                           for e in self.engines))

    # -- placement ------------------------------------------------------------------------
    def _check_devices_exist(self, per_node: int) -> None:
        problem = missing_devices(self.name, self.placements, per_node, self.platform)
        if problem:
            raise EngineFailure(problem)

    def _start(self, p: EnginePlacement) -> Engine:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from vroll.cluster.engine_actor import EngineActor

        node = alive_nodes()[p.node]
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        if self.platform != "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, p.local))
        # No Ray resources are claimed: roles that share devices (colocation) share these actors'
        # devices and take turns (sleep/wake); placement is by node and pinning, not by accounting.
        actor = self._ray.remote(num_cpus=0, num_gpus=0, max_concurrency=1)(EngineActor).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            runtime_env={"env_vars": env}, name=None,
        ).remote(self.role.model_copy(update={"device_mapping": list(p.devices)}), self.seed, p.rank,
                  list(p.local), self.platform)
        return Engine(p, actor)

    def _wait_ready(self, engines: list[Engine]) -> None:
        infos = self._call(engines, "start", lambda e: e.actor.info.remote())
        for e, info in zip(engines, infos):
            e.node_ip, e.pid = info["node"], info["pid"]

    # -- calls with deadlines ----------------------------------------------------------------
    def _call(self, engines: list[Engine], what: str, submit, timeout_s: float | None = None,
              progress: bool = False) -> list:
        """Submit one call per engine and collect the results; a dead or stuck engine is named."""
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
        from tqdm import tqdm

        refs = [submit(e) for e in engines]
        deadline = time.monotonic() + (timeout_s or self.call_timeout_s)
        results = []
        pairs = zip(engines, refs)
        if progress:
            pairs = tqdm(pairs, total=len(engines), desc=f"{self.name}: {what}", unit="engine")
        for e, ref in pairs:
            try:
                results.append(self._ray.get(ref, timeout=max(deadline - time.monotonic(), 0.001)))
            except GetTimeoutError:
                raise EngineFailure(f"{e.where(self.name)} did not answer within {timeout_s or self.call_timeout_s:.0f} s "
                                    f"while {what}") from None
            except RayActorError as err:
                raise EngineFailure(f"{e.where(self.name)} died while {what}: {str(err).splitlines()[0]}") from None
            except RayTaskError as err:
                raise err.as_instanceof_cause() from None
        return results

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Any], generating_args: GeneratingArgs | None = None,
                 prompt_overflow: str | None = None, use_tqdm: bool = False,
                 call: int | None = None) -> list[PromptResult]:
        """Split prompts across engines (balanced by expected work), results in input order. `call`
        numbers the generation for the seeds (default: the role's own count)."""
        g = generating_args or self.role.generating_args
        shares = split_by_work(prompts, len(self.engines), g)
        busy = [(e, idx) for e, idx in zip(self.engines, shares) if idx]
        share = {id(e): idx for e, idx in busy}
        if call is None:  # one count for the role: seeds do not depend on the split
            call, self._calls = self._calls, self._calls + 1
        outs = self._call([e for e, _ in busy], "generating",
                          lambda e: e.actor.generate.remote([prompts[i] for i in share[id(e)]], g,
                                                            prompt_overflow, share[id(e)], call), progress=use_tqdm)
        results: list[PromptResult | None] = [None] * len(prompts)
        for (_, idx), out in zip(busy, outs):
            for i, r in zip(idx, out):
                r.index = i
                results[i] = r
        return results  # type: ignore[return-value]

    # -- weights, sleep ------------------------------------------------------------------------
    def update_weights(self, named_tensors, partial: bool = False, verify: bool | None = None,
                       timeout_s: float | None = None) -> int:
        """Stream the weights to every engine: each bucket is put in Ray's object store once and read
        by the engines without a copy per engine."""
        bucket_bytes = int(self.role.strategy_args.strategy_config.get("weight_update_bucket_bytes", 256 << 20))
        if isinstance(named_tensors, dict):
            named_tensors = list(named_tensors.items())
        self._call(self.engines, "starting a weight update",
                   lambda e: e.actor.begin_update.remote(partial, verify, timeout_s))
        sent = []
        try:
            for bucket in buckets(named_tensors, bucket_bytes):
                arrays, specs = pack_bucket(bucket)
                ref = self._ray.put(arrays)
                self._call(self.engines, "loading weights", lambda e: e.actor.load_packed.remote(ref, specs))
                sent.append((ref, specs, partial))
            versions = self._call(self.engines, "finishing a weight update", lambda e: e.actor.finish_update.remote())
        except BaseException as err:
            for e in self.engines:  # end the update everywhere; engines that wrote weights mark them invalid
                e.actor.abort_update.remote(str(err).splitlines()[0] if str(err) else type(err).__name__)
            raise
        self.weight_version += 1
        self._replay = sent if not partial else self._replay + sent
        if len(set(versions)) != 1 or versions[0] != self.weight_version:
            self._call(self.engines, "aligning weight versions", lambda e: e.actor.adopt_version.remote(self.weight_version))
        return self.weight_version

    def adopt_weight_version(self, version: int) -> None:
        """Number the current weights `version` (a resumed run continues its count)."""
        self.weight_version = version
        self._call(self.engines, "aligning weight versions", lambda e: e.actor.adopt_version.remote(version))

    def sleep(self, level: int | None = None) -> list[dict]:
        return self._call(self.engines, f"going to sleep (level {level})", lambda e: e.actor.sleep.remote(level))

    def wake_up(self, tags: Sequence[str] | None = None) -> list[dict]:
        return self._call(self.engines, "waking up", lambda e: e.actor.wake_up.remote(tags))

    def info(self) -> list[dict]:
        return self._call(self.engines, "reporting", lambda e: e.actor.info.remote())

    # -- failures ---------------------------------------------------------------------------
    def restart(self, rank: int) -> None:
        """Replace engine `rank` by a new one, brought to the role's current weight version."""
        old = self.engines[rank]
        self._ray.kill(old.actor, no_restart=True)
        new = self._start(old.placement)
        self._wait_ready([new])
        if self._replay:
            self._call([new], "starting the catch-up update", lambda e: e.actor.begin_update.remote(False, None, None))
            for ref, specs, _ in self._replay:
                self._call([new], "catching up on weights", lambda e: e.actor.load_packed.remote(ref, specs))
            self._call([new], "finishing the catch-up update", lambda e: e.actor.finish_update.remote())
        self._call([new], "aligning weight versions", lambda e: e.actor.adopt_version.remote(self.weight_version))
        self.engines[rank] = new
        log.info("%s: engine rank %d restarted on %s at weight version %d", self.name, rank, new.node_ip,
                 self.weight_version)

    def close(self) -> None:
        release([e.actor for e in getattr(self, "engines", [])], getattr(self, "_owns_ray", False))
        self.engines, self._owns_ray = [], False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def split_by_work(prompts: Sequence[Any], engines: int, g: GeneratingArgs) -> list[list[int]]:
    """Prompt indices per engine, balancing expected tokens (prompt length + n x max_new_tokens); each
    engine's share keeps input order."""
    def size(p) -> int:
        if isinstance(p, dict):
            p = next(iter(p.values()))
        if isinstance(p, str):
            return len(p) // 4 + 1  # a rough token count, good enough to balance
        return sum(len(m.get("content", "")) // 4 + 4 for m in p) if p and isinstance(p[0], dict) else len(p)

    work = g.num_return_sequences * g.max_new_tokens
    loads = [0] * engines
    shares: list[list[int]] = [[] for _ in range(engines)]
    for i in sorted(range(len(prompts)), key=lambda i: -size(prompts[i])):
        k = loads.index(min(loads))
        shares[k].append(i)
        loads[k] += size(prompts[i]) + work
    return [sorted(s) for s in shares]

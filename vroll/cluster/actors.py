"""One role's Ray actors: one `RoleHost` per placement, with the rules engines and trainer ranks share.

Connect or start Ray, check that the nodes and slots exist, start each actor on its node (pinned to
its devices there), build the backend, call with a deadline, name the first member to fail, replace
a member, release everything (and the Ray this group started).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import psutil

from vroll.cluster.host import RoleHost
from vroll.cluster.placement import Placement, place
from vroll.cluster.ray_session import alive_nodes, connect, missing_devices, release
from vroll.config.layout import local_slots

log = logging.getLogger(__name__)

# How often a call that waits checks its members' processes itself. Ray names a dead actor only once
# its raylet sees the worker's connection close; a process the actor forked (a helper a library
# starts without exec) keeps that connection open, and Ray then reports the death only when that
# process ends too (a forked child that slept 120 s delayed it 119 s here). The group therefore
# looks at the pids of its members on this node while it waits: a member whose process is gone is
# named within this interval, whatever Ray knows.
LIVENESS_POLL_S = 0.5


class RoleFailure(RuntimeError):
    """A role's process died or did not answer in time; names role, rank, node and the call."""


@dataclass
class Member:
    placement: Placement
    actor: Any
    node_ip: str = "?"
    pid: int = 0
    node_id: str = ""
    started: float = 0.0  # the process's start time, when it runs on this node (pid reuse is not life)


class ActorGroup:
    """One actor per `devices_per_member` consecutive ids of `device_mapping`, for the role `name`.
    `label` names a member in messages ("engine rank", "rank"); `collective` members wait for each
    other, so any failure breaks the whole group. `env`: the role's own environment variables, in each
    member's environment from its start (kept where `drop_env` would remove them). `devices_per_node`: device slots per node of a joined
    cluster (default: this machine's CPU slots on CPU, 8 GPUs otherwise)."""

    def __init__(self, name: str, device_mapping: list[int], devices_per_member: int, platform: str, *,
                 label: str, failure: type[RoleFailure] = RoleFailure, call_timeout_s: float = 1800.0,
                 ray_address: str | None = None, devices_per_node: int | None = None,
                 collective: bool = False, drop_env: tuple = (), env: dict[str, str] | None = None):
        import ray

        per_node = devices_per_node or (local_slots() if platform == "cpu" else 8)
        placements = place(device_mapping, devices_per_member, per_node)  # before Ray: a bad mapping starts nothing

        self._ray = ray
        self.name, self.label, self.platform, self.failure = name, label, platform, failure
        self.call_timeout_s, self.collective = call_timeout_s, collective
        self.env = dict(env or {})  # the role's own environment, set in each member from its start
        self.drop_env = tuple(k for k in drop_env if k not in self.env)
        self.members: list[Member] = []
        self.broken = False
        self.watched_with: tuple[ActorGroup, ...] = ()  # groups whose deaths this group's calls report too
        self._owns_ray = connect(ray_address)
        try:  # a group that cannot start leaves no actor, and no Ray it started, behind
            problem = missing_devices(name, placements, per_node, platform)
            if problem:
                raise failure(problem)
            self.members = [Member(p, self._spawn(p)) for p in placements]
            self._learn_where(self.members)
        except BaseException:
            self.close()
            raise

    # -- starting ----------------------------------------------------------------------------
    def _spawn(self, p: Placement):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = alive_nodes()[p.node]
        env = dict(self.env)
        if self.platform != "cpu":  # pinning wins over the role's environment
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, p.local))
        # No Ray resources are claimed: roles that share devices (colocation) share these actors'
        # devices and take turns (sleep/wake); placement is by node and pinning, not by accounting.
        return self._ray.remote(num_cpus=0, num_gpus=0, max_concurrency=1)(RoleHost).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            runtime_env={"env_vars": env},
        ).remote(self.name, p.rank, list(p.local), self.platform, self.drop_env)

    def _learn_where(self, members: list[Member]) -> None:
        here = self._ray.get_runtime_context().get_node_id()
        for m, info in zip(members, self.call(members, "start", lambda m: m.actor.info.remote())):
            m.node_ip, m.pid, m.node_id = info["node"], info["pid"], info["node_id"]
            if m.node_id == here:
                try:
                    m.started = psutil.Process(m.pid).create_time()
                except psutil.Error:
                    pass

    @staticmethod
    def _gone(m: Member) -> bool:
        """True when member `m` runs on this node and its process has ended (or is a zombie)."""
        if not m.started:
            return False  # on another node, or not started yet: Ray's word only
        try:
            p = psutil.Process(m.pid)
            return p.create_time() != m.started or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False

    def build(self, target: str, args_of: Callable[[Member], tuple], kwargs: dict | None = None,
              members: list[Member] | None = None) -> None:
        """Build `module:Class(*args_of(member), **kwargs)` in every member (or in `members`)."""
        members = self.members if members is None else members
        self.call(members, "start", lambda m: m.actor.build.remote(target, args_of(m), kwargs or {}))

    def replace(self, rank: int) -> Member:
        """A new actor in place of member `rank` (same placement); the caller builds its backend."""
        old = self.members[rank]
        self._ray.kill(old.actor, no_restart=True)
        new = Member(old.placement, self._spawn(old.placement))
        self._learn_where([new])
        self.members[rank] = new
        return new

    # -- calls with deadlines ----------------------------------------------------------------
    def where(self, m: Member) -> str:
        at = f"node {m.node_ip}, pid {m.pid}, " if m.pid else ""
        return f"{self.name} {self.label} {m.placement.rank} ({at}devices {list(m.placement.devices)})"

    def call(self, members: Sequence[Member], what: str, submit: Callable[[Member], Any],
             progress: bool = False) -> list:
        """One call per member, all in flight together; results in member order. The first member to
        die, hang past the deadline or raise is named at once (members of a collective group would
        wait for it, not return). A backend's own exception is raised as itself."""
        from ray.exceptions import RayActorError, RayTaskError

        self._check_watched(what, waiting=False)
        refs = [submit(m) for m in members]
        member_of = {ref: m for ref, m in zip(refs, members)}
        index_of = {ref: i for i, ref in enumerate(refs)}
        deadline = time.monotonic() + self.call_timeout_s
        bar = self._progress(what, len(refs)) if progress else None
        pending, out = list(refs), {}
        while pending:
            left = deadline - time.monotonic()
            done, pending = self._ray.wait(pending, num_returns=1, timeout=max(min(left, LIVENESS_POLL_S), 0.001))
            if not done:
                gone = [member_of[ref] for ref in pending if self._gone(member_of[ref])]
                if gone:
                    self.broken = True
                    raise self.failure(f"{self.where(gone[0])} died while {what}: its process {gone[0].pid} "
                                       "has ended")
                self._check_watched(what, waiting=True)
                if left > LIVENESS_POLL_S:
                    continue
                self.broken = True
                stuck = ", ".join(self.where(member_of[ref]) for ref in pending)
                raise self.failure(f"{stuck} did not answer within {self.call_timeout_s:.0f} s while {what}")
            ref = done[0]
            try:
                out[index_of[ref]] = self._ray.get(ref)
            except RayActorError as err:
                self.broken = True
                raise self.failure(f"{self.where(member_of[ref])} died while {what}: "
                                   f"{str(err).splitlines()[0]}") from None
            except RayTaskError as err:
                self.broken = self.broken or self.collective
                # a member of a collective group whose peer died fails in the collective (gloo: "Connection
                # closed by peer"), often before Ray reports the death: name the dead member, not its peer
                gone = [m for m in members if self.collective and self._gone(m)]
                if gone:
                    raise self.failure(f"{self.where(gone[0])} died while {what}: its process {gone[0].pid} has "
                                       f"ended ({self.label} {member_of[ref].placement.rank} then failed: "
                                       f"{first_line(err.cause)})") from None
                raise err.as_instanceof_cause() from None
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return [out[i] for i in range(len(refs))]

    def _check_watched(self, what: str, waiting: bool) -> None:
        """Raise the failure of a group watched with this one whose member's process has ended, before
        this group's call starts or while it waits. A call abandoned while it waits leaves a collective
        group's members in it: the group is then broken (closing kills them)."""
        for other in self.watched_with:
            gone = [m for m in other.members if not other.broken and self._gone(m)]
            if gone:
                other.broken = True
                self.broken = self.broken or (waiting and self.collective)
                when = "while the run waited for" if waiting else "before the run's call to"
                raise other.failure(f"{other.where(gone[0])} died {when} {self.name} ({what}): its process "
                                    f"{gone[0].pid} has ended")

    def _progress(self, what: str, total: int):
        from tqdm import tqdm

        return tqdm(total=total, desc=f"{self.name}: {what}", unit=self.label.split()[0])

    def on_all(self, method: str, *args, what: str | None = None, members: list[Member] | None = None) -> list:
        """`method(*args)` of every member's backend (or of `members`')."""
        members = self.members if members is None else members
        return self.call(members, what or method, lambda m: m.actor.call.remote(method, *args))

    def on_each(self, method: str, args_of: Callable[[Member], tuple], what: str | None = None,
                members: list[Member] | None = None, progress: bool = False) -> list:
        """`method(*args_of(member))` of each member's backend: each with arguments of its own."""
        members = self.members if members is None else members
        return self.call(members, what or method, lambda m: m.actor.call.remote(method, *args_of(m)),
                         progress=progress)

    def infos(self) -> list[dict]:
        return self.call(self.members, "reporting", lambda m: m.actor.info.remote())

    # -- the end -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every actor (asking each to close first unless the group is broken), and the Ray
        this group started; safe to call twice."""
        release([m.actor for m in self.members], self._owns_ray, polite=not self.broken)
        self.members, self._owns_ray = [], False


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def watch_together(groups: Sequence[ActorGroup]) -> None:
    """Groups that cannot go on without each other (the roles of one run): a call of any of them that
    waits also checks the others' members on this node, so a member that dies while the caller waits
    for another group (an engine generating ahead while the trainer trains) is named within
    LIVENESS_POLL_S, not at the next call to its own group."""
    for g in groups:
        g.watched_with = tuple(o for o in groups if o is not g)

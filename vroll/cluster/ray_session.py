"""Start a local Ray on demand, or join an existing cluster (`ray_address` / RAY_ADDRESS)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager

from vroll.cluster import reaper
from vroll.config.layout import SLOTS_VAR, local_cores, local_slots

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The Ray cluster cannot be reached or cannot host the role."""


def connect(address: str | None = None) -> bool:
    """Connect to Ray; returns True when this call started a local Ray (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        # Ray 2.60 clusters use token authentication, but `ray.init(address=...)` only turns it on when
        # RAY_AUTH_MODE says so; do what Ray does for "auto": use the token if one is available
        # (RAY_AUTH_TOKEN or ~/.ray/auth_token, copied from the head node).
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        try:
            with sigterm_handler_kept():
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise ClusterError(f"ray_address: cannot join the Ray cluster at {address!r}: "
                               f"{str(e).splitlines()[0]}") from None
        log.info("joined the Ray cluster at %s (%d nodes)", address, len([n for n in ray.nodes() if n["Alive"]]))
        return False
    start_local()
    slots, cores = local_slots(), local_cores()
    log.info("started a local Ray (%d CPU slots%s, listening on 127.0.0.1 only)", slots,
             f" on {cores} cores, {SLOTS_VAR}" if slots != cores else "")
    return True


@contextmanager
def sigterm_handler_kept():
    """The driver's SIGTERM handler as it was before `ray.init`. Ray 2.60's `ray.init` replaces it (with
    `sys.exit`), then its core worker installs absl's failure-signal handler, which on SIGTERM prints a
    stack and aborts (exit -6): vroll's CLI, which unwinds a run on SIGTERM as on Ctrl-C, never ran."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


# -- a local Ray: loopback only, and nothing of it outlives the driver ---------------------------------
# Every Ray workaround and setting of a local session is here.
#
# Loopback: Ray 2.60's gRPC servers (GCS, raylet, object manager, and every worker's, this driver's
# included) listen on every interface unless the node's address is 127.0.0.1, and `ray.init` turns
# 127.0.0.1 into the machine's address (`services.resolve_ip_for_localhost`). Ray's own switch for
# laptops, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, makes the node's address 127.0.0.1 instead; with it
# every server, the RuntimeEnvAgent and the autoscaler's metrics server listen on 127.0.0.1 only (the
# dashboard is off). Ray reads it when imported (`ray_constants.ENABLE_RAY_CLUSTER`), so both the
# constant (this process) and the variable (the processes Ray starts) are set, only while starting.
#
# Lifetime: Ray ties the GCS and the raylet to the driver, but after `kill -9` of the driver the
# raylet's agents live 60 s more (see `reaper.py`). A small reaper process, started before Ray (on
# Linux: it reads /proc), kills every process of the session (started with `reaper.MARKER_VAR` in
# their environment, and their descendants) as soon as the driver dies or ends the session.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

_reaper: subprocess.Popen | None = None
_reaper_pipe: int | None = None


def start_local() -> None:
    """Start a local Ray (loopback only), watched by a reaper tied to this process's life."""
    import ray
    from ray._private import ray_constants

    marker = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    start_reaper(marker)
    saved_env = {k: os.environ.get(k) for k in [*LOCAL_RAY_ENV, reaper.MARKER_VAR]}
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOCAL_RAY_ENV, **{reaper.MARKER_VAR: marker})
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        # address="local": a new Ray of its own. Without it `ray.init` joins whatever Ray another
        # user or run last started on this machine (/tmp/ray/ray_current_cluster), or fails with
        # "When connecting to an existing cluster, num_cpus and num_gpus must not be provided".
        with sigterm_handler_kept():
            ray.init(address="local", num_cpus=local_slots(), include_dashboard=False, log_to_driver=False)
    except BaseException:
        stop_reaper()
        raise
    finally:  # what Ray started keeps them; this process's later children do not get them
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_reaper(marker: str) -> None:
    """`reaper.py` (a file run by path: it imports nothing of vroll), reading a pipe only this process
    holds (its write end is close-on-exec: Ray's processes do not inherit it)."""
    global _reaper, _reaper_pipe
    if not sys.platform.startswith("linux"):
        return
    read_end, write_end = os.pipe()
    try:
        _reaper = subprocess.Popen([sys.executable, reaper.__file__, marker, str(os.getpid())], stdin=read_end,
                                   stdout=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    finally:
        os.close(read_end)
    _reaper_pipe = write_end


def stop_reaper(timeout_s: float = 10.0) -> None:
    """End the session's watch: the reaper kills what is left of the session, then exits."""
    global _reaper, _reaper_pipe
    if _reaper_pipe is not None:
        try:
            os.write(_reaper_pipe, b"end")  # a child this process forked may hold the pipe open too
        except OSError:
            pass
        os.close(_reaper_pipe)
        _reaper_pipe = None
    if _reaper is not None:
        try:
            _reaper.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _reaper.kill()
        _reaper = None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds when nothing listens at a `host:port` address (ray.init would retry for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"ray_address: cannot join the Ray cluster at {address!r}: nothing answers there ({e}); "
                           "start it with `ray start --head` or fix the address") from None


def alive_nodes() -> list[dict]:
    """Alive Ray nodes in a stable order (by IP, then id): node k hosts device ids k*N .. k*N+N-1."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    return sorted(nodes, key=lambda n: (n["NodeManagerAddress"], n["NodeID"]))


def missing_devices(name: str, placements, per_node: int, platform: str) -> str | None:
    """Why the cluster cannot host these placements (a node or a CPU slot that does not exist), or None."""
    nodes = alive_nodes()
    for p in placements:
        if p.node >= len(nodes):
            return (f"{name}.device_mapping: devices {list(p.devices)} need node {p.node}, but the cluster has "
                    f"{len(nodes)} node(s) of {per_node} devices")
        if platform == "cpu" and max(p.local) >= int(nodes[p.node]["Resources"].get("CPU", 0)):
            return f"{name}.device_mapping: CPU slot {max(p.local)} does not exist on node {nodes[p.node]['NodeManagerAddress']}"
    return None


def stop_actors(actors: list, timeout_s: float = 30.0, polite: bool = True) -> None:
    """Ask each actor to close (freeing what it holds), then kill it; a dead actor, or any actor when
    not `polite` (one stuck in a collective would never answer), is just killed."""
    import ray

    for actor in actors:
        if polite:
            try:
                ray.get(actor.close.remote(), timeout=timeout_s)
            except Exception:  # noqa: BLE001 - a dead or stuck actor has nothing left to close
                pass
        ray.kill(actor, no_restart=True)


def release(actors: list, owns_ray: bool, polite: bool = True) -> None:
    """Stop a role's actors, and shut Ray down when the role started it."""
    import ray

    stop_actors(actors, polite=polite)
    if owns_ray:
        ray.shutdown()
        stop_reaper()

"""Start a local Ray on demand, or join an existing cluster (`ray_address` / RAY_ADDRESS)."""

from __future__ import annotations

import logging
import os

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
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise ClusterError(f"ray_address: cannot join the Ray cluster at {address!r}: "
                               f"{str(e).splitlines()[0]}") from None
        log.info("joined the Ray cluster at %s (%d nodes)", address, len([n for n in ray.nodes() if n["Alive"]]))
        return False
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    log.info("started a local Ray (%d CPU slots)", os.cpu_count())
    return True


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

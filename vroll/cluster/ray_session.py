"""Start a local Ray on demand, or join an existing cluster (`ray_address` / RAY_ADDRESS)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def connect(address: str | None = None) -> bool:
    """Connect to Ray; returns True when this call started a local Ray (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        log.info("joined the Ray cluster at %s (%d nodes)", address, len([n for n in ray.nodes() if n["Alive"]]))
        return False
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    log.info("started a local Ray (%d CPU slots)", os.cpu_count())
    return True


def alive_nodes() -> list[dict]:
    """Alive Ray nodes in a stable order (by IP, then id): node k hosts device ids k*N .. k*N+N-1."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    return sorted(nodes, key=lambda n: (n["NodeManagerAddress"], n["NodeID"]))

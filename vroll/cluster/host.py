"""The one Ray actor class: a process of its own for one engine or trainer rank, pinned to its
devices before the backend (and its threads) start, then building the backend it is told by name."""

from __future__ import annotations

import importlib
import logging
import os

from vroll.cluster.pinning import pin_to_slots


class RoleHost:
    def __init__(self, label: str, rank: int, local_devices: list[int], platform: str, drop_env: tuple = ()):
        for key in drop_env:  # state a driver's engine left in the environment Ray workers inherit
            os.environ.pop(key, None)
        if platform == "cpu":
            pin_to_slots(local_devices)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {label}[{rank}] %(levelname)s: %(message)s")
        self.rank, self.target = rank, None

    def build(self, target: str, args: tuple, kwargs: dict) -> None:
        """Import `module:Class` (only now, after pinning) and build it."""
        module, _, name = target.partition(":")
        self.target = getattr(importlib.import_module(module), name)(*args, **kwargs)

    def info(self) -> dict:
        import ray

        return {"rank": self.rank, "pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), "cores": sorted(os.sched_getaffinity(0))}

    def rendezvous(self) -> str:
        """A free address on this node, for a process group whose rank 0 this actor hosts: the node's
        own address (127.0.0.1 in a local Ray, see `ray_session`), where rank 0's store will listen."""
        import socket

        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        return f"tcp://{host}:{port}" if ":" not in host else f"tcp://[{host}]:{port}"

    def call(self, method: str, *args, **kwargs):
        return getattr(self.target, method)(*args, **kwargs)

    def close(self) -> None:
        if self.target is not None:
            self.target.close()

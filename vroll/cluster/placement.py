"""From `device_mapping` to engines: which devices, which node, which local slots."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnginePlacement:
    rank: int
    devices: tuple[int, ...]  # global device ids from device_mapping
    node: int  # index into the alive nodes
    local: tuple[int, ...]  # device ids on that node (CPU cores on a CPU node, GPU indices on a GPU node)


def place_engines(device_mapping: list[int], devices_per_engine: int, devices_per_node: int) -> list[EnginePlacement]:
    """Consecutive groups of `devices_per_engine` ids; an engine must not span two nodes."""
    out = []
    for rank, start in enumerate(range(0, len(device_mapping), devices_per_engine)):
        group = tuple(device_mapping[start:start + devices_per_engine])
        nodes = {d // devices_per_node for d in group}
        if len(nodes) != 1:
            raise ValueError(f"engine {rank} would span nodes {sorted(nodes)} (devices {list(group)}, "
                             f"{devices_per_node} per node); align device_mapping with the nodes")
        out.append(EnginePlacement(rank, group, nodes.pop(), tuple(d % devices_per_node for d in group)))
    return out

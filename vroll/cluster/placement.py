"""From `device_mapping` to a role's processes (engines or trainer ranks): which devices, which node,
which local slots."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    rank: int
    devices: tuple[int, ...]  # global device ids from device_mapping
    node: int  # index into the alive nodes
    local: tuple[int, ...]  # device ids on that node (CPU cores on a CPU node, GPU indices on a GPU node)


def place(device_mapping: list[int], devices_per_process: int, devices_per_node: int) -> list[Placement]:
    """Consecutive groups of `devices_per_process` ids; a process must not span two nodes."""
    out = []
    for rank, start in enumerate(range(0, len(device_mapping), devices_per_process)):
        group = tuple(device_mapping[start:start + devices_per_process])
        nodes = {d // devices_per_node for d in group}
        if len(nodes) != 1:
            raise ValueError(f"process {rank} would span nodes {sorted(nodes)} (devices {list(group)}, "
                             f"{devices_per_node} per node); align device_mapping with the nodes")
        out.append(Placement(rank, group, nodes.pop(), tuple(d % devices_per_node for d in group)))
    return out

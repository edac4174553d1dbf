"""Keep a process to the CPU slots its role was given (on the CPU backend device ids name slots; the
core each slot runs on is `config.layout.slot_cores`'s decision)."""

from __future__ import annotations

import os
from contextlib import contextmanager

from vroll.config.layout import slot_cores


def pin_to_slots(slots) -> None:
    """Pin this process to the cores of `slots` and size torch's OpenMP pool to them. The environment
    variable alone is not enough (the pool may already be sized when torch was imported); two OpenMP
    threads spinning on one core made an engine 17x slower."""
    cores = slot_cores(slots)
    os.sched_setaffinity(0, set(cores))
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    import torch

    torch.set_num_threads(len(cores))


@contextmanager
def affinity(slots):
    """This process on the cores of `slots` for a while (a role in the driver process), then back where
    it was."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(slot_cores(slots)))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)

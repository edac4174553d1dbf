"""Keep a process to the CPU cores its role was given (on the CPU backend device ids name cores)."""

from __future__ import annotations

import os
from contextlib import contextmanager


def pin_to_cores(cores) -> None:
    """Pin this process and size torch's OpenMP pool to `cores`. The environment variable alone is
    not enough (the pool may already be sized when torch was imported); two OpenMP threads spinning
    on one core made an engine 17x slower."""
    os.sched_setaffinity(0, set(cores))
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    import torch

    torch.set_num_threads(len(cores))


@contextmanager
def affinity(cores):
    """This process on `cores` for a while (a role in the driver process), then back where it was."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)

"""The one "did you mean" helper: a suggestion only when the name is a near-miss of an allowed one."""

from __future__ import annotations

import difflib
from typing import Iterable

# difflib's ratio: 0.75 keeps typos (top_pp -> top_p 0.91, gpu_memory_utilisation 0.95,
# batch_size -> infer_batch_size 0.77) and drops unrelated names (lora_rank -> actor_train 0.6,
# worker_cls -> world_size 0.4).
CUTOFF = 0.75


def closest(name: str, options: Iterable[str], cutoff: float = CUTOFF) -> str:
    """' (did you mean 'x'?)' for the closest allowed name, or '' when none is close."""
    match = difflib.get_close_matches(str(name), list(options), n=1, cutoff=cutoff)
    return f" (did you mean {match[0]!r}?)" if match else ""

"""Parse `device_mapping`: a list of ints, or the guide's string ``list(range(a, b[, step]))``.

The string is matched by a regular expression and never evaluated.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"^\s*list\s*\(\s*range\s*\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)\s*\)\s*$")
ALLOWED = "a list of device ids (e.g. [0, 1]) or the string 'list(range(start, stop[, step]))'"


def parse_device_mapping(value) -> list[int]:
    """Return the device ids; raise ValueError with what is allowed for anything else."""
    if isinstance(value, str):
        m = _RANGE.match(value)
        if not m:
            raise ValueError(f"cannot parse {value!r}: expected {ALLOWED}")
        a, b, c = (int(x) if x is not None else None for x in m.groups())
        start, stop, step = (0, a, 1) if b is None else (a, b, 1 if c is None else c)
        if step == 0:
            raise ValueError(f"{value!r}: range() step must not be zero")
        return list(range(start, stop, step))
    if isinstance(value, (list, tuple)):
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise ValueError(f"{list(value)!r}: every entry must be an integer device id")
        return list(value)
    raise ValueError(f"{value!r}: expected {ALLOWED}")

"""Parse `device_mapping`: a list of ints, or a string as ROLL writes them: ``list(range(a, b[, step]))``,
``[0, 1]`` or ``list([0, 1])``, and sums of these (``list(range(0, 4)) + [8, 9]``).

The string is matched by regular expressions and never evaluated.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"^\s*list\s*\(\s*range\s*\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)\s*\)\s*$")
_LIST = re.compile(r"^\s*(?:list\s*\(\s*)?\[\s*((?:-?\d+\s*,\s*)*(?:-?\d+)?)\s*,?\s*\]\s*(?:\)\s*)?$")
ALLOWED = ("a list of device ids (e.g. [0, 1]) or a string 'list(range(start, stop[, step]))', '[0, 1]' or "
           "'list([0, 1])', or a sum of these")


def parse_device_mapping(value) -> list[int]:
    """Return the device ids; raise ValueError with what is allowed for anything else."""
    if isinstance(value, str):
        return [d for part in value.split("+") for d in _parse_part(part, value)]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise ValueError(f"{list(value)!r}: every entry must be an integer device id")
        return list(value)
    raise ValueError(f"{value!r}: expected {ALLOWED}")


def _parse_part(part: str, whole: str) -> list[int]:
    m = _RANGE.match(part)
    if m:
        a, b, c = (int(x) if x is not None else None for x in m.groups())
        start, stop, step = (0, a, 1) if b is None else (a, b, 1 if c is None else c)
        if step == 0:
            raise ValueError(f"{whole!r}: range() step must not be zero")
        return list(range(start, stop, step))
    m = _LIST.match(part)
    if m:
        return [int(x) for x in m.group(1).split(",") if x.strip()]
    raise ValueError(f"cannot parse {whole!r}: expected {ALLOWED}")

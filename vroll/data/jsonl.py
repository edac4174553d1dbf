"""JSONL files as a user gives them: lines decoded one at a time, so a byte that is not UTF-8 is
named by file and line rather than ending in a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from vroll.config.errors import UserError


class EncodingError(UserError, ValueError):
    """A line of a text file that is not UTF-8."""


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line; raises EncodingError naming the first line that is not UTF-8."""
    path = Path(path)
    with open(path, "rb") as f:
        for no, raw in enumerate(f, start=1):
            try:
                yield no, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise EncodingError(
                    f"{path}:{no}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None

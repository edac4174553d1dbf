"""A run owns its output_dir: the folder is made (or refused, clearly) and locked before anything
starts, by `output_dir/.vroll.lock` (JSON: pid, host, start time), removed however the run ends. A
second run on the same folder is refused, naming the first; a lock left by a process that is gone
(on this host) is taken over with a warning."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from vroll.config.errors import ConfigError, Issue, UserError

log = logging.getLogger(__name__)

LOCK = ".vroll.lock"


class OutputDirBusy(UserError):
    """Another run holds the output_dir."""


@contextmanager
def own_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """The folder, made if needed and locked for this process while the block runs."""
    path = Path(output_dir).expanduser()
    created = not path.exists()
    make_output_dir(path)
    lock = path / LOCK
    acquire(lock)
    try:
        yield path
    finally:
        if read_lock(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)
        if created:  # removed only when empty: a run that stopped before writing anything
            with suppress(OSError):
                path.rmdir()


def refuse_if_busy(output_dir: str | Path) -> None:
    """A first look at the lock, before a run's slower checks (vLLM's import among them): another live
    run on the folder refuses this one at once. The lock itself is taken when the run starts."""
    lock = Path(output_dir).expanduser() / LOCK
    if holder := live_holder(lock):
        raise OutputDirBusy(busy_message(lock, holder))


def make_output_dir(path: Path) -> None:
    def refuse(why: str):
        raise ConfigError([Issue("output_dir", f"{str(path)!r} {why}; choose a folder this user can write to")])

    if path.exists() and not path.is_dir():
        refuse("is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        refuse(f"cannot be created ({e.strerror or e})")
    if not os.access(path, os.W_OK | os.X_OK):
        refuse("is not writable")


def acquire(lock: Path) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(lock)
            if not stale(holder):  # an unreadable lock ({}) refuses too: its run cannot be checked
                raise OutputDirBusy(busy_message(lock, holder)) from None
            log.warning("output_dir %s: taking over the lock of pid %s on %s, which is no longer running (%s)",
                        lock.parent, holder["pid"], holder["host"], lock)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise OutputDirBusy(busy_message(lock, read_lock(lock)))


def busy_message(lock: Path, holder: dict) -> str:
    who = (f"pid {holder['pid']} on host {holder['host']}, started {holder.get('started', '?')}"
           if {"pid", "host"} <= holder.keys() else "its lock file cannot be read")
    return (f"output_dir {str(lock.parent)!r} is in use by another vroll run ({who}): wait for it to end or "
            f"choose another output_dir; if that run is gone, delete {lock}")


def read_lock(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def live_holder(lock: Path) -> dict | None:
    """The lock's holder when it names a process that may still run (this host's running, or another
    host's); None without a readable lock (one being removed reads as none: `acquire` decides then)."""
    holder = read_lock(lock)
    return holder if holder and not stale(holder) else None


def stale(holder: dict) -> bool:
    """True when the lock's process ran on this host and is gone (another host's cannot be checked)."""
    pid = holder.get("pid")
    return isinstance(pid, int) and holder.get("host") == socket.gethostname() and not running(pid)


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a zombie (killed, not yet reaped) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

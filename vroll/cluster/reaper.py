"""Kills what is left of a local Ray session once the process that started it is gone.

Run by `ray_session` as `python reaper.py <marker> <driver pid>` (this file alone: it imports nothing
of vroll, so it starts in a few tens of milliseconds), with a pipe from the driver as its stdin. Every
process of the session (GCS, raylet, agents, workers, and anything they start) is started with the
marker in its environment; the reaper follows them and their descendants while the session lasts.
When the driver ends the session (a byte on the pipe, or its end) or dies (`kill -9` too), every
process of the session still alive is killed.

Why it is needed: after `kill -9` of the driver, the raylet and GCS die with it (Ray ties them to it),
but the raylet's agents (DashboardAgent, RuntimeEnvAgent) then try to publish the raylet's last logs
to the dead GCS, with a fixed timeout of 60 s (`ray._private.utils.publish_error_to_driver`), and live
that long. Ray 2.60 has no option to shorten it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

MARKER_VAR = "VROLL_RAY_SESSION"
WATCH_INTERVAL_S = 0.5


def processes() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, start time in clock ticks since boot)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            table[int(name)] = (int(fields[1]), int(fields[19]))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            pass
    return table


def carries(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:  # gone, a zombie, or not ours
        return False


class Session:
    """The session's processes: those that carry the marker, and every descendant of theirs. Some of
    Ray's processes rename themselves (`ray::DashboardAgent`), which overwrites the environment that
    /proc shows, so descendants are followed too, and remembered while the session lasts: once the
    raylet has died its agents' parent is no longer it."""

    def __init__(self, marker: str):
        self.marker = f"{MARKER_VAR}={marker}".encode()
        self.checked: dict[tuple[int, int], bool] = {}  # (pid, start) -> carries the marker
        self.known: set[tuple[int, int]] = set()  # (pid, start) of the session's processes seen

    def look(self) -> set[tuple[int, int]]:
        """The session's processes now (and remember them)."""
        table, me = processes(), os.getpid()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        now = set()
        for pid, (_, start) in table.items():
            key = (pid, start)
            if key not in self.checked:
                self.checked[key] = carries(pid, self.marker)
            if self.checked[key] or key in self.known:
                now.add(key)
        todo = [pid for pid, _ in now]
        while todo:  # and their descendants
            for child in children.get(todo.pop(), []):
                key = (child, table[child][1])
                if key not in now:
                    now.add(key)
                    todo.append(child)
        now = {(pid, start) for pid, start in now if pid != me}
        self.known |= now
        return now

    def reap(self, within_s: float = 5.0) -> int:
        """SIGKILL every process of the session, again until none is left (one may start another
        while it dies); returns how many were killed."""
        killed: set[tuple[int, int]] = set()
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            alive = self.look() - killed
            if not alive:
                break
            for pid, start in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                killed.add((pid, start))
            time.sleep(0.1)
        return len(killed)


def wait_for_the_end(driver_pid: int, session: Session) -> None:
    """Return when stdin has something to say (a byte: the session ended; end of file: the driver
    ended it or died; a child the driver forked may still hold the pipe, hence the byte) or the
    driver's pid ends; meanwhile follow the session's processes."""
    watched = [sys.stdin.fileno()]
    try:
        watched.append(os.pidfd_open(driver_pid))  # readable when the driver exits (Linux >= 5.3)
    except (AttributeError, OSError):
        pass
    while True:
        ready, _, _ = select.select(watched, [], [], WATCH_INTERVAL_S)
        if ready:
            return
        if len(watched) == 1 and not os.path.exists(f"/proc/{driver_pid}"):
            return
        session.look()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal's group is the driver's to handle
    session = Session(sys.argv[1])
    wait_for_the_end(int(sys.argv[2]), session)
    session.reap()


if __name__ == "__main__":
    main()

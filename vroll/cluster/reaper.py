"""Kills what is left of a local Ray session once the process that started it is gone.

Run by `ray_session` as `python reaper.py <marker> <driver pid>` (this file alone: it imports nothing
of vroll, so it starts in a few tens of milliseconds), with a pipe from the driver as its stdin. Every
process of the session (GCS, raylet, agents, workers, and anything they start) carries the marker in
its environment, from the moment it was started. When the pipe closes (the driver ended the session,
or died: `kill -9` closes it too) or the driver's pid ends, every process that still carries the
marker is killed.

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


def session_pids(marker: bytes) -> list[int]:
    """Processes whose environment (as they were started) holds `marker` (`VAR=value`)."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:  # gone, a zombie, or not ours
            pass
    return found


def reap(marker: bytes, within_s: float = 5.0) -> int:
    """SIGKILL every process of the session, again until none is left (one may start another while
    it dies); returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        pids = session_pids(marker)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        time.sleep(0.1)
    return len(killed)


def wait_for_the_end(driver_pid: int) -> None:
    """Return when stdin has something to say (a byte: the session ended; end of file: the driver
    ended it or died; a child the driver forked may still hold the pipe, hence the byte) or the
    driver's pid ends."""
    watched = [sys.stdin.fileno()]
    try:
        watched.append(os.pidfd_open(driver_pid))  # readable when the driver exits (Linux >= 5.3)
    except (AttributeError, OSError):
        pass
    while True:
        ready, _, _ = select.select(watched, [], [], 1.0)
        if ready:
            return
        if len(watched) == 1 and not os.path.exists(f"/proc/{driver_pid}"):
            return


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal's group is the driver's to handle
    marker, driver_pid = sys.argv[1], int(sys.argv[2])
    wait_for_the_end(driver_pid)
    reap(f"{MARKER_VAR}={marker}".encode())


if __name__ == "__main__":
    main()

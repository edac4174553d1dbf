"""The reaper of a local Ray session (`vroll/cluster/reaper.py`), without Ray: it kills the processes
that carry its session's marker, and only those, when the session ends or its driver dies."""

import os
import subprocess
import sys
import time

from vroll.cluster import reaper


def sleeper(marker=None):
    env = dict(os.environ)
    if marker:
        env[reaper.MARKER_VAR] = marker
    return subprocess.Popen(["sleep", "60"], env=env)


def start_reaper(marker, driver_pid):
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, reaper.__file__, marker, str(driver_pid)], stdin=read_end)
    os.close(read_end)
    return proc, write_end


def test_the_session_end_kills_its_processes_and_no_other():
    mine, other_session, unmarked = sleeper("s1"), sleeper("s2"), sleeper()
    proc, pipe = start_reaper("s1", os.getpid())
    try:
        time.sleep(0.5)
        assert proc.poll() is None and mine.poll() is None  # nothing happens while the session lasts
        os.write(pipe, b"end")
        assert proc.wait(timeout=10) == 0
        assert mine.wait(timeout=5) == -9
        assert other_session.poll() is None and unmarked.poll() is None
    finally:
        os.close(pipe)
        for p in (mine, other_session, unmarked):
            p.kill()
            p.wait()


def test_the_drivers_death_kills_the_session_even_if_the_pipe_stays_open():
    """A child the driver forked may keep the pipe open: the driver's pid ending is enough."""
    driver, mine = sleeper(), sleeper("s3")
    proc, pipe = start_reaper("s3", driver.pid)
    try:
        driver.kill()
        driver.wait()
        assert proc.wait(timeout=10) == 0
        assert mine.wait(timeout=5) == -9
    finally:
        os.close(pipe)
        mine.kill()
        mine.wait()

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


def test_a_descendant_that_lost_the_marker_and_its_parent_is_still_killed():
    """Ray's agents rename themselves (their environment, as /proc shows it, is gone) and outlive
    their parent, the raylet: a descendant seen while the session lasts is the session's."""
    env = dict(os.environ, **{reaper.MARKER_VAR: "s4"})
    parent = subprocess.Popen(["sh", "-c", "env -i sleep 60 & echo $!; wait"], env=env, stdout=subprocess.PIPE,
                              text=True)
    orphan = int(parent.stdout.readline())
    proc, pipe = start_reaper("s4", os.getpid())
    try:
        time.sleep(1.5)  # the reaper has seen the family
        parent.kill()
        parent.wait()
        os.write(pipe, b"end")
        assert proc.wait(timeout=10) == 0
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{orphan}") and open(f"/proc/{orphan}/stat").read().split()[2] != "Z":
            assert time.monotonic() < deadline, "the orphan still runs"
            time.sleep(0.1)
    finally:
        os.close(pipe)
        try:
            os.kill(orphan, 9)
        except OSError:
            pass

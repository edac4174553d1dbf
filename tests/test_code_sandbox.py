"""The code reward's sandbox: right and wrong programs scored right; hostile programs score 0 within
their limit and change nothing outside the sandbox."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from vroll.config.schema import RewardConfig
from vroll.rewards.code_sandbox import Limits, extract_code, network_isolation, run_sandboxed, score_response
from vroll.rewards.workers import RewardItem, RewardRouter

LIMITS = Limits(time_s=2.0, memory_mb=512, output_kb=64)
DOUBLE = [{"stdin": "21\n", "expected_stdout": "42\n"}, {"stdin": "-3", "expected_stdout": "-6"}]
ASSERTS = [{"assert_code": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"},
           {"assert_code": "def test_big():\n    assert add(10**12, 1) == 10**12 + 1"}]


def score(program: str, cases=DOUBLE, case_type="input") -> float:
    return score_response(f"<think>plan</think>\n```python\n{program}\n```", case_type, cases, limits=LIMITS)


def test_right_and_wrong_programs():
    assert score("print(int(input()) * 2)") == 1.0
    assert score("print(int(input()) + 21)") == 0.0  # right on the first case only
    assert score("def add(a, b):\n    return a + b", ASSERTS, "assert") == 1.0
    assert score("def add(a, b):\n    return a - b", ASSERTS, "assert") == 0.0
    assert score("def add(a, b):\n    return a + b", json.dumps(ASSERTS), "assert") == 1.0  # ROLL's JSON string
    assert score("print(int(input() * 2)") == 0.0  # a syntax error
    assert score("raise SystemExit(3)") == 0.0
    assert score_response("no code here at all", "input", DOUBLE, limits=LIMITS) == 0.0  # garbage
    assert score_response("", "input", DOUBLE, limits=LIMITS) == 0.0


def test_outputs_compare_by_line_or_as_numbers():
    from vroll.rewards.code_sandbox import same_output

    assert same_output("1 2\n3  \n\n", "1 2\n3")
    assert same_output("0.3333333333\n", "0.333333") and same_output("1.0 2", "1 2.000000001")
    assert not same_output("1 2", "2 1") and not same_output("0.33", "0.333333") and not same_output("1", "1 1")
    assert not same_output("abc", "abd")


def test_code_is_found_as_rolls_local_path_finds_it():
    assert extract_code("<think>```python\nwrong\n```</think>```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```text\nnotes\n``` then ```python\ndef f():\n    pass\n```") == "def f():\n    pass\n"
    assert extract_code("print(1)") == "print(1)"


def timed(program: str, cases=DOUBLE) -> tuple[float, float]:
    start = time.monotonic()
    return score(program, cases), time.monotonic() - start


def test_an_infinite_loop_is_killed_at_the_time_limit():
    got, took = timed("while True:\n    pass")
    assert got == 0.0 and LIMITS.time_s <= took < LIMITS.time_s + 2  # the first case fails: no second run
    assert sandboxed_processes() == []


def test_a_fork_bomb_scores_0_and_leaves_no_process():
    got, took = timed("import os\nwhile True:\n    os.fork()")
    assert got == 0.0 and took < LIMITS.time_s + 2
    assert sandboxed_processes() == []


def sandboxed_processes() -> list[str]:
    """Processes still running in a sandbox folder."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if "vroll-sandbox-" in os.readlink(f"/proc/{pid}/cwd"):
                found.append(pid)
        except OSError:
            pass
    return found


def test_writes_and_deletes_outside_the_folder_change_nothing(tmp_path):
    outside, kept = tmp_path / "outside.txt", tmp_path / "kept.txt"
    kept.write_text("mine")
    for program in (f"open({str(outside)!r}, 'w').write('x')\nprint(int(input()) * 2)",
                    f"import os\nos.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)\nprint(int(input()) * 2)",
                    f"import pathlib\npathlib.Path({str(outside)!r}).touch()\nprint(int(input()) * 2)",
                    f"import os\nos.remove({str(kept)!r})\nprint(int(input()) * 2)",
                    f"import shutil\nshutil.rmtree({str(tmp_path)!r})\nprint(int(input()) * 2)",
                    "import os\nos.symlink('/', 'up')\nopen('up/tmp/vroll-escape', 'w')\nprint(int(input()) * 2)"):
        assert score(program) == 0.0, program
    assert not outside.exists() and kept.read_text() == "mine" and not os.path.exists("/tmp/vroll-escape")
    # its own folder is writable (and gone afterwards)
    assert score("open('scratch.txt', 'w').write(input())\nprint(int(open('scratch.txt').read()) * 2)") == 1.0


def test_a_socket_reaches_nothing():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(LIMITS.time_s + 3)
    port, accepted = server.getsockname()[1], []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:  # the time-out, or the socket closed: nothing came
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n" \
              "print(int(input()) * 2)"
    assert score(program) == 0.0
    thread.join(LIMITS.time_s + 4)
    server.close()
    assert accepted == []


@pytest.mark.skipif(not network_isolation(), reason="no network namespace on this machine (unshare -n)")
def test_the_network_namespace_alone_cuts_the_network():
    server = socket.create_server(("127.0.0.1", 0))
    connect = f"import socket; socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=2)"
    assert subprocess.run([sys.executable, "-c", connect], timeout=30).returncode == 0  # reachable outside
    assert subprocess.run([*network_isolation(), sys.executable, "-c", connect], capture_output=True,
                          timeout=30).returncode != 0
    server.close()


def test_huge_output_and_memory_are_cut_off():
    got, took = timed("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    assert got == 0.0 and took < LIMITS.time_s
    assert run_sandboxed("print('y' * 10**7)", limits=LIMITS).stdout.count("y") <= 64 << 10
    assert score("x = bytearray(4 << 30)\nprint(int(input()) * 2)") == 0.0
    # the limits cannot be lifted from inside (root could, but the audit hook refuses it)
    lift = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n"
    assert score(lift + "x = bytearray(4 << 30)\nprint(int(input()) * 2)") == 0.0
    assert score(lift + "print(int(input()) * 2)") == 0.0


def test_the_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("VROLL_TEST_SECRET", "s3cret")
    run = run_sandboxed("import os\nprint(os.environ.get('VROLL_TEST_SECRET'), os.getcwd() == os.environ['HOME'])",
                        limits=LIMITS)
    assert run.ok and run.stdout.split() == ["None", "True"]


def test_the_worker_routes_weights_and_never_crashes_a_step():
    cfg = {"code": RewardConfig(reward_type="code_sandbox", tag_included=["code"], weight=2.0, time_limit_s=2.0)}
    router = RewardRouter(cfg)
    row = {"test_cases": DOUBLE, "case_type": "input", "test_case_function": None}
    items = [RewardItem("q", "```python\nprint(int(input()) * 2)\n```", None, "code", row),
             RewardItem("q", "```python\nwhile True: pass\n```", None, "code", row),
             RewardItem("q", "print(1)", None, "code", {}),  # no test cases: an error, scored 0
             RewardItem("q", "print(1)", None, "code", dict(row, test_case_function="solve"))]  # not supported
    combined, correct, metrics = router.score(items)
    assert combined == [2.0, 0.0, 0.0, 0.0] and correct == [1.0, 0.0, 0.0, 0.0]
    assert metrics["reward/code/errors"] == 2.0


def test_rows_without_test_cases_are_counted_before_start():
    from vroll.pipeline.dataset import PromptRecord
    from vroll.rewards.workers import missing_fields

    cfg = {"code": RewardConfig(reward_type="code_sandbox", tag_included=["code"])}
    rows = [PromptRecord(0, [1], "q", tag="code", extra={"test_cases": DOUBLE}, source="d.jsonl:1"),
            PromptRecord(1, [1], "q", tag="code", source="d.jsonl:2"),
            PromptRecord(2, [1], "q", tag="math", source="d.jsonl:3")]  # not routed to the code worker
    issues = missing_fields(cfg, rows, "actor_train.data_args")
    assert [str(i) for i in issues] == [
        "actor_train.data_args.file_name: 1 row(s) have no 'test_cases', which reward worker 'code' (code_sandbox) "
        "needs to score them (d.jsonl:2): add 'test_cases' to each, or tag them for other workers"]


def test_samples_run_in_parallel():
    from vroll.rewards.code_sandbox import CodeSandboxWorker

    worker = CodeSandboxWorker(RewardConfig(reward_type="code_sandbox", time_limit_s=2.0))
    worker.parallel = 4
    row = {"test_cases": DOUBLE}
    items = [RewardItem("q", "while True: pass", None, None, row)] * 4
    start = time.monotonic()
    assert worker.score(items) == [0.0] * 4
    assert time.monotonic() - start < 2 * 2.0 + 2  # not 4 x 2 s one after another

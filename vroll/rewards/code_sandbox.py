"""ROLL's code reward (`CodeSandboxRewardWorker`, vroll's `code_sandbox`): the response's program runs
against the data row's test cases in a sandboxed subprocess; 1 when every case passes, else 0.

Each run: a fresh temporary folder as cwd and HOME, a scrubbed environment, `python -I`, limits on
time (the process group killed), memory (RLIMIT_AS), processes (RLIMIT_NPROC), output and file size
(RLIMIT_FSIZE), open files; no network (`unshare -n`, a network namespace, where it works here); and
an audit hook in the child that refuses sockets, new processes, ctypes, signals to other processes
and writes outside the folder (the only layer where the kernel ones are missing: root ignores
RLIMIT_NPROC, and a machine without namespaces has no `unshare -n`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

# ROLL (like LiveCodeBench) puts common imports before the program; solutions rely on them
PRELUDE = ("import sys, os, re, math, string, heapq, bisect, itertools, functools, collections, json\n"
           "from typing import *\nfrom collections import *\nfrom itertools import *\nfrom functools import *\n"
           "from math import *\nfrom heapq import *\nfrom bisect import *\nsys.setrecursionlimit(10**6)\n")

# Runs in the child before the program: refuses what a test program never needs (best effort in Python;
# the kernel limits above it are the hard ones).
GUARD = r'''
import os, resource, sys
def _install():
    for name, value in LIMITS.items():  # set here, not in a preexec_fn (unsafe in vroll's threaded process)
        resource.setrlimit(getattr(resource, name), (value, value))
    root = os.path.realpath(os.getcwd())
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    deny = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
            "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
            "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
            "os.setuid", "os.chroot", "sys.addaudithook", "resource.setrlimit", "resource.prlimit"}
    paths = {"os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,), "os.chmod": (0,),
             "os.chown": (0,), "os.symlink": (1,), "os.link": (1,), "os.truncate": (0,), "os.utime": (0,),
             "shutil.rmtree": (0,), "os.mkfifo": (0,), "os.mknod": (0,)}
    def inside(path):
        if isinstance(path, int):
            return False
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep)
    def hook(event, args):
        if event in deny or (event == "import" and args[0] in ("_posixsubprocess", "_ctypes")):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & writing)
            if (writes or os.path.isdir(path)) and not inside(path):
                raise PermissionError(f"sandbox: {path!r} is outside the sandbox")
        elif event in paths and not all(inside(args[i]) for i in paths[event]):
            raise PermissionError(f"sandbox: {event} outside the sandbox")
    sys.addaudithook(hook)
_install()
del _install
import runpy
runpy.run_path("main.py", run_name="__main__")
'''


@dataclass
class Limits:
    time_s: float = 10.0
    memory_mb: int = 1024
    output_kb: int = 1024
    processes: int = 16
    open_files: int = 64


@dataclass
class RunResult:
    returncode: int | None  # None: killed on timeout
    stdout: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _guard(limits: Limits) -> str:
    """The child's first code: its resource limits, then the audit hook, then the program."""
    rlimits = {"RLIMIT_AS": limits.memory_mb << 20, "RLIMIT_CPU": int(limits.time_s) + 1,
               "RLIMIT_FSIZE": limits.output_kb << 10, "RLIMIT_NPROC": limits.processes,
               "RLIMIT_NOFILE": limits.open_files, "RLIMIT_CORE": 0}
    return f"LIMITS = {rlimits!r}\n{GUARD}"


def _env(folder: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


@lru_cache(maxsize=1)
def network_isolation() -> tuple[str, ...]:
    """The command prefix that gives the child no network: `unshare -n` (as root) or `unshare -rn`
    (a user namespace), whichever works on this machine; () when neither does."""
    tool = shutil.which("unshare")
    for prefix in ((tool, "-n"), (tool, "-r", "-n")) if tool else ():
        try:
            if subprocess.run([*prefix, sys.executable, "-I", "-c", "pass"], capture_output=True,
                              timeout=30).returncode == 0:
                return prefix
        except (OSError, subprocess.SubprocessError):
            pass
    return ()


def run_sandboxed(program: str, stdin: str = "", limits: Limits = Limits()) -> RunResult:
    """Run a Python program in the sandbox; never raises for anything the program does."""
    with tempfile.TemporaryDirectory(prefix="vroll-sandbox-") as folder, \
            tempfile.TemporaryDirectory(prefix="vroll-sandbox-io-") as io_folder:
        with open(os.path.join(folder, "main.py"), "w") as f:
            f.write(program)
        with open(os.path.join(io_folder, "stdin"), "w") as f:
            f.write(stdin)
        out_path = os.path.join(io_folder, "stdout")
        with open(os.path.join(io_folder, "stdin")) as fin, open(out_path, "wb") as fout:
            proc = subprocess.Popen([*network_isolation(), sys.executable, "-I", "-c", _guard(limits)],
                                    cwd=folder, env=_env(folder), stdin=fin, stdout=fout,
                                    stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
            try:
                code = proc.wait(timeout=limits.time_s)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the program's children too
                except ProcessLookupError:
                    pass
                proc.wait()
        with open(out_path, "rb") as f:
            out = f.read(limits.output_kb << 10).decode("utf-8", "replace")
    return RunResult(code, out)


def extract_code(response: str) -> str:
    """The program in a response, as ROLL's local path finds it: after `</think>`, the first fenced block
    holding a `def` (else the first block), or the whole text when it has no fence."""
    text = response.split("<|begin_of_solution|>")[-1].split("</think>")[-1].strip()
    if "```" not in text:
        return text
    blocks = re.findall(r"```[\w+#.\-]*[ \t]*\n?(.*?)```", text, re.DOTALL)
    return next((b for b in blocks if "def " in b), blocks[0] if blocks else "")


def _same_token(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-8)  # numpy.allclose's tolerances
    except ValueError:
        return False


def same_output(got: str, expected: str) -> bool:
    """Equal line by line (each line stripped, blank lines at the ends ignored), or token by token with
    numbers equal as floats (as LiveCodeBench's comparison, which ROLL uses, allows)."""
    lines = lambda s: [ln.strip() for ln in s.strip().splitlines()]  # noqa: E731
    if lines(got) == lines(expected):
        return True
    a, b = got.split(), expected.split()
    return len(a) == len(b) and all(_same_token(x, y) for x, y in zip(a, b))


def test_program(code: str, case: dict, case_type: str) -> str:
    """The program one test case runs (stdin/stdout cases run the code itself)."""
    if case_type in ("assert", "pytest"):
        tests = case["assert_code"] if isinstance(case, dict) else str(case)
        calls = "".join(f"{name}()\n" for name in re.findall(r"^def (test_\w+)\s*\(", tests, re.MULTILINE))
        return f"{PRELUDE}{code}\n{tests}\n{calls}"
    return PRELUDE + code


def score_response(response: str, case_type: str, test_cases, function: str | None = None,
                   limits: Limits = Limits()) -> float:
    """1.0 when the response's program passes every test case, else 0.0."""
    if isinstance(test_cases, str):
        test_cases = json.loads(test_cases)
    if function not in (None, "", "None"):
        raise ValueError(f"call-based test cases (test_case_function {function!r}) are not supported yet")
    if case_type not in ("input", "stdin", "assert", "pytest", None, ""):
        raise ValueError(f"case_type {case_type!r} is not supported (only stdin/stdout, assert and pytest)")
    code = extract_code(response)
    if not code or not test_cases:
        return 0.0
    for case in test_cases:
        stdin = case.get("stdin", "") if case_type not in ("assert", "pytest") else ""
        run = run_sandboxed(test_program(code, case, case_type), stdin, limits)
        if not run.ok or (case_type not in ("assert", "pytest") and
                          not same_output(run.stdout, str(case.get("expected_stdout", "")))):
            return 0.0
    return 1.0


class CodeSandboxWorker:
    """ROLL's CodeSandboxRewardWorker (its local path): the row's `test_cases`, `case_type` and
    `test_case_function` fields; 1 when all cases pass, 0 otherwise. Samples run in parallel (one
    sandbox per thread, up to one per CPU core)."""

    checks_answer = True

    def __init__(self, cfg):
        self.limits = Limits(time_s=cfg.time_limit_s, memory_mb=cfg.memory_limit_mb, output_kb=cfg.output_limit_kb)
        self.parallel = max(1, min(8, os.cpu_count() or 1))

    def score(self, items) -> list[float]:
        """A sample that raises makes the batch raise: the router then scores each alone, naming it."""
        with ThreadPoolExecutor(self.parallel) as pool:
            return list(pool.map(self.score_one, items))

    def score_one(self, item) -> float:
        row = item.extra
        if row.get("test_cases") is None:
            raise ValueError("the prompt's data has no test_cases")
        return score_response(item.response_text, row.get("case_type") or "input", row["test_cases"],
                              row.get("test_case_function"), self.limits)

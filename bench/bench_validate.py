"""`vroll validate CONFIG --platform none`: wall time of the command (a fresh Python each run), this
tree against another checkout of vroll (e.g. an older commit), in the same run, alternating. CONFIG is
relative to each tree (its model and data folders must be there too).

    git worktree add /tmp/vroll-old <commit>
    .venv/bin/python bench/bench_validate.py --baseline /tmp/vroll-old
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import alternate

HERE = Path(__file__).resolve().parent.parent


def command(tree: Path, config: str, env: dict):
    """Runs in `tree` (relative paths in the file resolve there; `python -m` imports vroll from there)."""
    def run():
        subprocess.run([sys.executable, "-m", "vroll.cli.main", "validate", config, "--platform", "none"],
                       cwd=tree, env={**env, "PYTHONPATH": str(tree)}, check=True, capture_output=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="examples/rlvr_tiny.yaml")
    ap.add_argument("--baseline", type=Path, help="another vroll checkout to time the same way")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ)
    runs = {"this tree": command(HERE, args.config, env)}
    if args.baseline:
        runs["baseline"] = command(args.baseline.resolve(), args.config, env)
    times = alternate(runs, args.rounds)  # the first (warm-up) run also fills vLLM's argument cache
    print(f"| vroll validate {args.config} --platform none | median s | min s |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} |")
    if args.baseline:
        print(f"\nbaseline / this tree: {statistics.median(times['baseline']) / statistics.median(times['this tree']):.1f}x")


if __name__ == "__main__":
    main()

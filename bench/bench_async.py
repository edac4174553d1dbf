"""The asynchronous loop against the synchronous one on the same CPU slots: time per step and held-out
accuracy at the last step, per seed, in one run.

    .venv/bin/python bench/bench_async.py examples/rlvr_tiny.yaml [--steps 100] [--seeds 0 1]
                                         [--infer 0] [--train 1] [--ratio 1] [key=value ...]

Each (mode, seed) is one `vroll train FILE` (a CLI subprocess) with actor_infer on `--infer` and
actor_train (and any reference or critic) on `--train`: `async_generation_ratio=0` (the engine and
the trainer take turns, each on its own slot) against `async_generation_ratio=RATIO` (the engine
generates the next step while the trainer trains). Time per step is the wall-clock between the ends
of consecutive steps (from metrics.jsonl's arrival), the first step left out; steps with validation
are left out too (they cost the same in both). Prints a Markdown table and writes bench_async.json
under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(config: str, overrides: list[str], out_dir: Path) -> dict:
    """One `vroll train`; returns the seconds between step ends, and the first and last accuracy."""
    exe = Path(sys.executable).with_name("vroll")
    cmd = [str(exe), "train", config, *overrides, f"output_dir={out_dir}", "save_steps=100000",
           "resume_from_checkpoint=false"]
    metrics = out_dir / "metrics.jsonl"
    ends: list[tuple[float, dict]] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = 0
    while proc.poll() is None:  # timestamp each metrics line as it lands
        time.sleep(0.05)
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            for line in lines[seen:]:
                ends.append((time.perf_counter(), json.loads(line)))
            seen = len(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"vroll train failed ({' '.join(cmd)}):\n{proc.stderr.read()[-3000:]}")
    for line in metrics.read_text().splitlines()[seen:]:
        ends.append((time.perf_counter(), json.loads(line)))
    steps = [(t, r) for t, r in ends if r["step"] > 0]
    gaps = [b[0] - a[0] for a, b in zip(steps, steps[1:]) if "val/accuracy" not in b[1]]
    vals = [r["val/accuracy"] for _, r in ends if "val/accuracy" in r]
    return {"seconds": gaps, "median_s": statistics.median(gaps), "mean_s": statistics.mean(gaps),
            "val_first": vals[0] if vals else None, "val_last": vals[-1] if vals else None,
            "wait_rollout_s": statistics.median([r.get("time/wait_rollout", 0.0) for _, r in steps[1:]] or [0.0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--infer", default="0", help="actor_infer's CPU slot(s), e.g. 0")
    ap.add_argument("--train", default="1", help="actor_train's CPU slot(s), e.g. 1")
    ap.add_argument("--ratio", type=int, default=1)
    ap.add_argument("--out", default="outputs/bench_async")
    a = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    slots = [f"actor_infer.device_mapping=[{a.infer}]", f"actor_train.device_mapping=[{a.train}]"]
    results: dict[str, dict] = {}
    for seed in a.seeds:
        for mode, ratio in (("sync", 0), ("async", a.ratio)):
            name = f"{mode}-seed{seed}"
            over = [*a.overrides, *slots, f"seed={seed}", f"max_steps={a.steps}", f"async_generation_ratio={ratio}"]
            print(f"running {name} ...", flush=True)
            results[name] = run(a.config, over, Path(a.out) / name)
            print(f"  {name}: median {results[name]['median_s']:.3f} s/step, held-out accuracy "
                  f"{results[name]['val_first']} -> {results[name]['val_last']}", flush=True)
    rows = ["| run | s/step (median) | s/step (mean) | trainer waiting (median) | held-out accuracy first -> last |",
            "|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['median_s']:.3f} | {r['mean_s']:.3f} | {r['wait_rollout_s']:.3f} | "
                    f"{r['val_first']} -> {r['val_last']} |")
    speed = [results[f"sync-seed{s}"]["median_s"] / results[f"async-seed{s}"]["median_s"] for s in a.seeds]
    acc = {m: statistics.mean(results[f"{m}-seed{s}"]["val_last"] or 0 for s in a.seeds) for m in ("sync", "async")}
    rows.append("")
    rows.append(f"async / sync steps per second: {', '.join(f'{x:.2f}x' for x in speed)} (seeds {a.seeds}); "
                f"held-out accuracy at the last step, mean over seeds: sync {acc['sync']:.3f}, async {acc['async']:.3f}")
    print("\n".join(rows))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "bench_async.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1))


if __name__ == "__main__":
    main()

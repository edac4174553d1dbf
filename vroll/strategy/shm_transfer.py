"""`vroll_shm`: weights into a running vLLM engine through vLLM's own weight-transfer protocol
(vllm/distributed/weight_transfer: init, start, update, finish with the weight version), carried
by shared memory on one node (Linux memfd segments).

vLLM's transports (`nccl`, `ipc`) need an accelerator; on CPU none runs (docs/engine-notes.md), so
vroll registers this one under the same protocol. The sender (the driver) writes a bucket into a
shared-memory segment and sends only the segment's name (with the sender's pid and descriptor) and
each tensor's name, dtype, shape and offset as the update info; the engine's worker maps the segment
and loads through vroll's reload helper.

Segments are anonymous files (memfd): they never appear in /dev/shm, so no update, failed or not,
and no killed process leaves one behind; their memory goes when the last process holding them does.
The sender reuses them from one update to the next (`SegmentPool`), which is what makes the path
fast: fresh shared memory costs page allocation and faults on both sides at every update.
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

from vroll.strategy import vllm_compat
from vroll.strategy.weights import Checksum

BACKEND = "vroll_shm"
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
    pid: int = 0
    fd: int = -1
    nbytes: int = 0
    live: list[str] | None = None
    tensors: list[torch.Tensor] | None = None
    checksum: list[float] | None = None
    want_checksum: bool = False

    def __post_init__(self):
        n = len(self.names)
        if len(self.dtype_names) != n or len(self.shapes) != n:
            raise ValueError(f"vroll_shm: {n} names but {len(self.dtype_names)} dtypes and {len(self.shapes)} shapes")
        if (self.segment is None) == (self.tensors is None):
            raise ValueError("vroll_shm: an update carries either a segment or the tensors, not both or neither")
        if self.segment is not None and (self.offsets is None or len(self.offsets) != n or self.fd < 0):
            raise ValueError("vroll_shm: a segment update needs one offset per tensor and the sender's descriptor")


# -- the worker side ------------------------------------------------------------------------

@functools.cache
def engine_class() -> type:
    """vLLM's worker-side engine for `vroll_shm` (built on first use, so senders need no vLLM)."""
    from vllm.distributed.weight_transfer.base import WeightTransferEngine

    class ShmWeightTransferEngine(WeightTransferEngine):
        """Maps each bucket's segment (or takes the tensors as given) and loads them with vroll's
        reloader (`vllm_compat.weight_reloader`), which re-packs the CPU kernels; a tied lm_head is
        re-packed at finish."""

        init_info_cls = ShmInitInfo
        update_info_cls = ShmUpdateInfo
        supports_draft_weight_update = False

        def __init__(self, config, vllm_config, device, model) -> None:
            super().__init__(config, vllm_config, device, model)
            self.receipt = Checksum()
            self.mapped: dict[str, mmap.mmap] = {}  # the sender's segments, by name
            self.reloader = vllm_compat.weight_reloader(vllm_config, model)

        def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
            """Nothing to open: each update names its segments."""

        def start_weight_update(self) -> None:
            """Nothing is staged here: each bucket is loaded as it comes (layers arrive whole:
            `UpdateSession.check_bucket` refuses a layer split over buckets)."""
            self.receipt = Checksum()

        def receive_weights(self, update_info: ShmUpdateInfo) -> None:
            named = received_tensors(update_info, self.mapped)
            self.receipt = checksum_of(named) if update_info.want_checksum else Checksum()
            self.reloader.load(named)

        def finish_weight_update(self) -> None:
            self.reloader.finish()

        def shutdown(self) -> None:
            self.mapped.clear()

    return ShmWeightTransferEngine


def register_engine() -> None:
    """Make `vroll_shm` a backend vLLM's factory can build (`weight_transfer_config`); idempotent.
    Must run in the engine's process before the engine starts (vroll's engines run in-process)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    try:
        WeightTransferEngineFactory.register_engine(BACKEND, engine_class())
    except ValueError:  # already registered in this process
        pass


def received_tensors(info: ShmUpdateInfo, mapped: dict | None = None) -> list[tuple[str, torch.Tensor]]:
    """The bucket as (name, tensor) pairs: the given tensors, or views of the sender's segment (no
    copy). `mapped`: the worker's segment mappings by name, kept between updates so that the pages of
    a reused segment stay mapped; pruned to the segments the sender still holds (`info.live`)."""
    if info.tensors is not None:
        return list(zip(info.names, info.tensors))
    mapped = {} if mapped is None else mapped
    for name in [n for n in mapped if n not in set(info.live or ())]:
        del mapped[name]
    if info.segment not in mapped:
        mapped[info.segment] = map_segment(info.segment, info.pid, info.fd, info.nbytes)
    buf = mapped[info.segment]
    return [(name, _view(buf, offset, dtype, shape))
            for name, dtype, shape, offset in zip(info.names, info.dtype_names, info.shapes, info.offsets)]


def map_segment(name: str, pid: int, fd: int, nbytes: int) -> mmap.mmap:
    """Map another process's segment read-only through /proc/<pid>/fd/<fd> (same user, same node);
    the link's target is checked, so a reused descriptor number is never taken for the segment."""
    path = f"/proc/{pid}/fd/{fd}"
    try:
        if not os.readlink(path).startswith(f"/memfd:{name} "):
            raise FileNotFoundError(f"{path} is no longer segment {name}")
        handle = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise RuntimeError(f"vroll_shm: cannot open segment {name} of process {pid} ({e}); the sender must run "
                           "on this node as the same user") from e
    try:
        return mmap.mmap(handle, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(handle)


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
    """Shared memory of the sender: an anonymous file (memfd), never named in /dev/shm, so nothing
    outlives the processes that hold it, even a killed driver. Pages are allocated at creation."""

    def __init__(self, nbytes: int):
        self.name = f"{SEGMENT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.nbytes = max(nbytes, 1)
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.nbytes)
            self.buf = mmap.mmap(self.fd, self.nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        """Drop the sender's descriptor and mapping (the memory goes once no engine maps it)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
            try:
                self.buf.close()
            except BufferError:  # a view is still alive somewhere; the GC frees it with the view
                pass


@dataclass
class Written:
    """A bucket written into a segment: what the protocol's update info announces about it."""

    segment: Segment
    layout: dict[str, Any]
    checksum: Checksum | None

    def update_info(self, live: list[str]) -> dict[str, Any]:
        c = self.checksum
        return {**self.layout, "segment": self.segment.name, "pid": os.getpid(), "fd": self.segment.fd,
                "nbytes": self.segment.nbytes, "live": live,
                "checksum": [c.count, c.total, c.squares] if c is not None else None, "want_checksum": c is not None}


class SegmentPool:
    """The sender's segments, reused from one update to the next: writing into pages that are
    already allocated, and that the engines already map, costs about a plain copy; fresh shared
    memory costs several times that (page allocation and faults on both sides, docs/benchmarks.md).

    A segment is either free or held by a bucket the caller keeps (to catch up a restarted engine).
    `recycle(old)` after a complete update frees the buckets it replaced and closes free segments
    that update did not need, so at most two copies of the weights are held."""

    def __init__(self):
        self.free: list[Segment] = []
        self.held: dict[str, Segment] = {}

    def write(self, bucket: list[tuple[str, torch.Tensor]], checksum: bool) -> Written:
        """Copy a bucket into a free segment large enough (or a new one): the one copy on the way."""
        tensors = [t.detach() for _, t in bucket]
        offsets, end = [], 0
        for t in tensors:
            offsets.append(end)
            end += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
        layout = {"names": [n for n, _ in bucket], "dtype_names": [_dtype_name(t) for t in tensors],
                  "shapes": [list(t.shape) for t in tensors], "offsets": offsets}
        seg = self._take(end)
        for t, offset, dtype in zip(tensors, offsets, layout["dtype_names"]):
            _view(seg.buf, offset, dtype, list(t.shape)).copy_(t)
        return Written(seg, layout, checksum_of(bucket) if checksum else None)

    def _take(self, nbytes: int) -> Segment:
        fits = [s for s in self.free if s.nbytes >= nbytes]
        seg = min(fits, key=lambda s: s.nbytes) if fits else Segment(nbytes)
        if fits:
            self.free.remove(seg)
        self.held[seg.name] = seg
        return seg

    def live(self) -> list[str]:
        """Names of every segment the pool holds (an engine may drop its mappings of the others)."""
        return list(self.held) + [s.name for s in self.free]

    def release(self, written: list[Written]) -> None:
        """The buckets are no longer needed (a failed update's, or replaced ones): free their segments."""
        for w in written:
            if self.held.pop(w.segment.name, None) is not None:
                self.free.append(w.segment)

    def recycle(self, replaced: list[Written]) -> None:
        """After a complete update: close the free segments it did not need, free the replaced ones."""
        for seg in self.free:
            seg.close()
        self.free = []
        self.release(replaced)

    def close(self) -> None:
        for seg in list(self.held.values()) + self.free:
            seg.close()
        self.held, self.free = {}, []


def open_segments(pid: int | None = None) -> list[str]:
    """Names of the vroll segments process `pid` (default: this one) holds open (Python's mmap holds a
    descriptor of its own too, so one name may show twice in /proc; it is listed once)."""
    fd_dir = f"/proc/{pid or os.getpid()}/fd"
    names = set()
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith(f"/memfd:{SEGMENT_PREFIX}"):
            names.add(target.removeprefix("/memfd:").split(" ")[0])
    return sorted(names)


def named_leftovers() -> list[str]:
    """vroll names in /dev/shm (there should never be any: segments are anonymous)."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX))


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

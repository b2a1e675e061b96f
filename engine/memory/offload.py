"""Gradient checkpointing with the saved block inputs in pinned host memory.

Gradient checkpointing keeps, per transformer block, only the block's inputs, but at long
lengths those add up: Wan 14B at 1280x768 x 161 frames keeps 40 x 157,440 tokens x 5120 x 2 bytes
= 60 GiB. torch's (non-reentrant) checkpoint saves a block's inputs as saved tensors before it
runs the block under its own hooks, so saved-tensor hooks placed around each checkpoint call see
exactly those inputs: every large one is copied to a pinned host buffer on a side CUDA stream
(overlapping the next block's compute), and brought back when the block's backward recomputes it.

Why our own hooks and not `torch.autograd.graph.save_on_cpu`: that copies synchronously on the
compute stream and allocates from torch's caching host allocator, which rounds every buffer up to
a power of two and never gives memory back (the base and the extended pass want different sizes),
so host memory ends far above what is in use (measured: the 14B step at 121 frames was killed for
host memory on a 125 GiB machine). `PinnedPool` page-locks ordinary memory itself
(`cudaHostRegister`), reuses it by size, and really frees the smaller slabs when bigger tensors come.
"""

from __future__ import annotations

import weakref

import torch
import torch.utils.checkpoint

MIN_BYTES = 16 * 2**20  # smaller saved tensors (text, time embeddings) stay on the GPU
SLAB_ROUND = 64 * 2**20  # host slabs are whole multiples of this


class PinnedPool:
    """Host buffers reused by size. `pin=False` (CPU tests) uses ordinary memory."""

    def __init__(self, pin: bool = True):
        self.pin = pin
        self.free: list[tuple[torch.Tensor, object]] = []  # (uint8 slab, event the last copy out of it recorded)
        self.allocated_bytes = 0
        self.peak_bytes = 0

    def take(self, nbytes: int) -> torch.Tensor:
        fits = [i for i, (slab, _) in enumerate(self.free) if slab.numel() >= nbytes]
        if fits:
            slab, event = self.free.pop(min(fits, key=lambda i: self.free[i][0].numel()))
            if event is not None:
                event.synchronize()  # the copy back to the GPU that last read it has finished
            return slab
        # Nothing fits: the free slabs are too small for this pass's tensors; give them back first.
        for slab, event in self.free:
            if event is not None:
                event.synchronize()
            self.allocated_bytes -= slab.numel()
        self.free.clear()
        size = -(-nbytes // SLAB_ROUND) * SLAB_ROUND
        slab = _pinned(size) if self.pin else torch.empty(size, dtype=torch.uint8)
        self.allocated_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.allocated_bytes)
        return slab

    def give(self, slab: torch.Tensor, event=None) -> None:
        self.free.append((slab, event))

    def clear(self) -> None:
        for _, event in self.free:
            if event is not None:
                event.synchronize()
        self.allocated_bytes -= sum(slab.numel() for slab, _ in self.free)
        self.free.clear()


    def reserve(self, count: int, nbytes: int) -> None:
        """Have `count` free slabs of at least `nbytes` ready (what the first step would allocate)."""
        slabs = [self.take(nbytes) for _ in range(count)]
        for slab in slabs:
            self.give(slab)


def _unregister(ptr: int) -> None:
    try:
        torch.cuda.cudart().cudaHostUnregister(ptr)
    except Exception:  # noqa: BLE001 - interpreter shutdown: the process frees it anyway
        pass


def _pinned(size: int) -> torch.Tensor:
    """Ordinary host memory, page-locked here and unlocked when the tensor object goes (then freed for real)."""
    slab = torch.empty(size, dtype=torch.uint8)
    err = torch.cuda.cudart().cudaHostRegister(slab.data_ptr(), size, 0)
    if int(err) != 0:
        raise RuntimeError(f"cudaHostRegister of {size / 2**30:.1f} GiB failed (error {int(err)}): host memory "
                           "cannot be page-locked; turn offload_activations off or free host memory.")
    weakref.finalize(slab, _unregister, slab.data_ptr())
    return slab


class _Offloaded:
    __slots__ = ("slab", "view", "device", "event")

    def __init__(self, slab, view, device, event):
        self.slab, self.view, self.device, self.event = slab, view, device, event


class ActivationOffload:
    """Saved-tensor hooks that move large saved tensors to host buffers from `pool`.

    `offloadable(t)`: which tensors move (default: CUDA tensors of at least MIN_BYTES). Copies go
    out on a side stream; the GPU memory is released once the copy is done (`record_stream`).
    """

    def __init__(self, pool: PinnedPool | None = None, min_bytes: int = MIN_BYTES, offloadable=None):
        self.pool = pool or PinnedPool(pin=torch.cuda.is_available())
        self.min_bytes = min_bytes
        self.offloadable = offloadable or (lambda t: t.is_cuda)
        self.stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        self.offloaded_bytes = 0  # moved to the host since this object was made (reports, tests)

    def pack(self, t: torch.Tensor):
        nbytes = t.numel() * t.element_size()
        if nbytes < self.min_bytes or not self.offloadable(t):
            if t.untyped_storage().nbytes() >= self.min_bytes + nbytes and self.offloadable(t):
                # A small view of a large tensor would keep all of it on the device: HunyuanVideo's single-stream
                # blocks return the text tokens as a view of their whole [video | text] output, and the next block
                # saves that view (run 30: ~40 block inputs' worth held on the GPU despite the offload).
                return t.clone()
            return t
        slab = self.pool.take(nbytes)
        view = slab[:nbytes].view(t.dtype).view(t.shape)
        if t.is_cuda:
            self.stream.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(self.stream):
                view.copy_(t, non_blocking=True)
            t.record_stream(self.stream)  # t's memory is reused only after the copy
            event = torch.cuda.Event()
            event.record(self.stream)
        else:
            view.copy_(t)
            event = None
        self.offloaded_bytes += nbytes
        return _Offloaded(slab, view, t.device, event)

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        if packed.event is not None:
            torch.cuda.current_stream(packed.device).wait_event(packed.event)
        back = packed.view.to(packed.device, non_blocking=True, copy=True)  # the slab is reused: never alias it
        done = None
        if back.is_cuda:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(packed.device))
        self.pool.give(packed.slab, done)  # reused once `back` has arrived
        return back

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def offloading_checkpoint(offload: ActivationOffload):
    """A `gradient_checkpointing_func` for diffusers' `enable_gradient_checkpointing`: block inputs to the host."""

    def checkpoint(block, *args):
        # Only the inputs are saved under these hooks: inside, checkpoint's own hooks take over.
        with offload.hooks():
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)

    return checkpoint


def enable_activation_offload(transformer, offload: ActivationOffload | None = None) -> ActivationOffload:
    """Gradient checkpointing on `transformer` with its saved block inputs offloaded to host memory."""
    offload = offload or ActivationOffload()
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=offloading_checkpoint(offload))
    return offload

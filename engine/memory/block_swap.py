"""Block swap: the frozen base weights of some transformer blocks live in page-locked host memory.

Each swapped block's frozen Linear/Conv weights (and biases) are packed into one host slab. Just
before the block runs, the slab is copied into one GPU buffer on a side stream (the next swapped
block in the direction of travel is copied while this one computes) and the parameters become views
of it; afterwards they point at the host slab again and the GPU buffer is freed once nothing uses it.
The LoRA weights, norms and other small tensors stay on the GPU: only frozen weights move, so
nothing the optimizer updates is ever copied or restored.

When a swapped block gives its weights back:
  - without gradients (sampling, validation) and in the first forward of a training step: after its
    forward (gradient checkpointing saves only the block's inputs, so nothing holds the weights);
  - in the backward, where checkpointing recomputes the block: only once the gradient of the block's
    input exists, i.e. its backward is over, or once the block before it starts its recompute (autograd
    has run every node of the later block by then). Nested checkpoints inside the block (ffn_chunks)
    recompute during that backward and read the weights then; a layer that runs while its block's
    weights are on the host (a nested checkpoint in a block that is not checkpointed itself) loads
    them again; a block whose input needs no gradient (the first) gives them back when the backward ends.
So at most two swapped blocks are on the GPU at once: the one running and the one being copied in.

Why not diffusers' group offloading (`apply_group_offloading`): it moves every parameter of a group,
the trainable LoRA included, and with streams it restores them from a host snapshot taken when it was
applied, which would undo every optimizer step; it is built for inference. Needs gradient
checkpointing for training (without it the forward keeps every block's weights for the backward).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .blocks import block_modules
from .offload import _pinned

_MOVABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_ALIGN = 256  # bytes: every tensor in a slab starts on this boundary


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


class _SwappedBlock:
    """One block's frozen weights: their host slab, and the GPU buffer while it is loaded."""

    def __init__(self, index: int, params: list[torch.nn.Parameter], pin: bool):
        self.index = index
        self.params = params
        self.offsets, size = [], 0
        for p in params:
            self.offsets.append(size)
            size += -(-p.numel() * p.element_size() // _ALIGN) * _ALIGN
        self.device = params[0].device
        self.slab = _pinned(size) if pin else torch.empty(size, dtype=torch.uint8)
        self.host = [self._view(self.slab, i) for i in range(len(params))]
        for p, host in zip(params, self.host):
            host.copy_(p.data)
        self.buffer = None  # the GPU copy while loaded
        self.event = None  # the copy into it (side stream)

    def _view(self, buf: torch.Tensor, i: int) -> torch.Tensor:
        p, start = self.params[i], self.offsets[i]
        return buf[start:start + p.numel() * p.element_size()].view(p.dtype).view(p.shape)

    @property
    def nbytes(self) -> int:
        return self.slab.numel()

    def release(self) -> None:
        if self.event is not None:  # prefetched, never used: its copy must land before the memory is reused
            torch.cuda.current_stream(self.buffer.device).wait_event(self.event)
        for p, host in zip(self.params, self.host):
            p.data = host
        self.buffer = self.event = None  # views still saved for a backward keep it alive until then


class BlockSwap:
    """Swap the frozen weights of the first `count` blocks of `transformer` (on `device`) with host memory."""

    def __init__(self, transformer, count: int, pin: bool | None = None):
        blocks = block_modules(transformer, "block_swap")
        if not 1 <= count <= len(blocks):
            raise InputError(f"block_swap={count}: {type(transformer).__name__} has {len(blocks)} blocks; choose 0 "
                             f"(off) to {len(blocks)}.")
        self.device = next(transformer.parameters()).device
        pin = self.device.type == "cuda" if pin is None else pin
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.blocks = blocks
        # A block's list (its name less the index): prefetching never crosses from one expert's blocks to another's,
        # whose next block may not run in this forward.
        names = {id(m): n for n, m in transformer.named_modules()}
        self.group = [names[id(b)].rpartition(".")[0] for b in blocks]
        self.swapped: dict[int, _SwappedBlock] = {}
        for i, block in enumerate(blocks[:count]):
            params = [p for m in block.modules() if isinstance(m, _MOVABLE)
                      for p in m.parameters(recurse=False) if not p.requires_grad]
            if params:
                self.swapped[i] = _SwappedBlock(i, params, pin)
                self.swapped[i].release()
        self._callback_queued = False
        self._handles = []
        for i, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._before(i)))
            if i in self.swapped:
                self._handles.append(block.register_forward_hook(self._after(i)))
                for m in block.modules():  # a nested recompute calls these without the block (see _reload)
                    if isinstance(m, _MOVABLE) and any(not p.requires_grad for p in m.parameters(recurse=False)):
                        self._handles.append(m.register_forward_pre_hook(self._reload(i)))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def host_bytes(self) -> int:
        return sum(s.nbytes for s in self.swapped.values())

    def loaded(self) -> list[int]:
        """Indices of the swapped blocks whose weights are on the device now (tests, reports)."""
        return [i for i, s in self.swapped.items() if s.buffer is not None]

    def remove(self) -> None:
        """Put every weight back on the device and take the hooks off."""
        for handle in self._handles:
            handle.remove()
        for s in self.swapped.values():
            for p, host in zip(s.params, s.host):
                p.data = host.to(self.device)
        self.swapped.clear()

    # -- copies
    def _load(self, s: _SwappedBlock) -> None:
        if s.buffer is not None:
            return
        if self.stream is None:
            s.buffer = s.slab.clone()
        else:
            compute = torch.cuda.current_stream(self.device)
            # Allocated on the compute stream (freed in its order, no record_stream needed); written on the
            # side stream once the compute stream has reached this point.
            s.buffer = torch.empty(s.slab.shape, dtype=torch.uint8, device=self.device)
            self.stream.wait_stream(compute)
            with torch.cuda.stream(self.stream):
                s.buffer.copy_(s.slab, non_blocking=True)
                s.event = torch.cuda.Event()
                s.event.record(self.stream)
        for i, p in enumerate(s.params):
            p.data = s._view(s.buffer, i)

    def _ready(self, s: _SwappedBlock) -> None:
        self._load(s)
        if s.event is not None:
            torch.cuda.current_stream(self.device).wait_event(s.event)
            s.event = None

    def _prefetch_after(self, i: int, step: int) -> None:
        j = i + step
        while 0 <= j < len(self.blocks) and j not in self.swapped:
            j += step
        if 0 <= j < len(self.blocks) and self.group[j] == self.group[i]:
            self._load(self.swapped[j])

    # -- hooks
    def _before(self, i: int):
        def hook(module, args):
            backward = _in_backward()
            if backward and not self._callback_queued:  # whatever is still loaded goes when the backward ends
                self._callback_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._release_all)
            if i in self.swapped:
                if backward:
                    # A recompute starts here, so every later block's recompute is over (autograd runs their
                    # nodes first) and what their backward still reads of the weights it holds as saved tensors.
                    # The gradient hook alone is late where a block takes two inputs from the one before
                    # (HunyuanVideo's video and text streams): it fires only at the node making args[0].
                    for j in self.loaded():
                        if j != i:
                            self.swapped[j].release()
                self._ready(self.swapped[i])
                if torch.is_grad_enabled() and not backward and args and torch.is_tensor(args[0]) \
                        and args[0].requires_grad:
                    # The first forward of a training step: the block's backward ends when its input's
                    # gradient exists; it recomputes (and needs the weights) up to then.
                    args[0].register_hook(self._released_by_gradient(i))
            self._prefetch_after(i, -1 if backward else 1)
        return hook

    def _reload(self, i: int):
        def hook(module, args):
            # A layer of block i runs while its weights are on the host: a nested checkpoint (ffn_chunks) in a
            # block that is not itself checkpointed (HunyuanVideo's text refiner) recomputes in the backward
            # without calling the block. Load them; they go when the backward ends.
            s = self.swapped[i]
            if s.buffer is None:
                if _in_backward() and not self._callback_queued:
                    self._callback_queued = True
                    torch.autograd.Variable._execution_engine.queue_callback(self._release_all)
                self._ready(s)
        return hook

    def _after(self, i: int):
        def hook(module, args, output):
            # In the backward (checkpoint's recompute, which may also stop before the block's end and skip this
            # hook) the block's own backward still reads the weights: the gradient hook or the callback frees them.
            if not _in_backward():
                self.swapped[i].release()
        return hook

    def _released_by_gradient(self, i: int):
        def hook(grad):
            self.swapped[i].release()
        return hook

    def _release_all(self) -> None:
        self._callback_queued = False
        for s in self.swapped.values():
            s.release()


def enable_block_swap(transformer, count: int) -> BlockSwap | None:
    """Swap the first `count` blocks' frozen weights with host memory (0: off). After the LoRA and fp8 storage."""
    return BlockSwap(transformer, int(count)) if count else None

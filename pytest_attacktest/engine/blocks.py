"""Forward passes over many inputs in blocks sized by memory, halved on out-of-memory.

Why: the engine pushes a chunk's training and validation points through the
model (hundreds of points per sample), and the attack runs on the whole chunk
at once. A fixed block of 4096 points is a few MiB of digits but 2.4 GB of
224x224 images before the model's activations (about 23 MiB per image for
ResNet-50 without gradients), which would not fit on an 80 GB GPU. So a block
holds at most :data:`BLOCK_INPUT_BYTES` of input, and when the framework still
runs out of device memory (a larger model than the budget assumes, memory
taken by the user's own tensors) the block is halved and the same inputs are
run again, down to one input per block. Results do not depend on the block
size: the passes are inference (no state carried between blocks).

On a device that says how much memory is free (PyTorch on CUDA, JAX on an
accelerator), 64 MiB of input is far too little: ResNet-50 at 224x224 ran in
blocks of 111 images, well below the batch where an H200 reaches its
throughput. There a block is sized from the memory free when the pass starts
(:func:`device_block_size`): half of it, for the inputs and an estimate of
their activations (:data:`ACTIVATION_FACTOR` times the input bytes), asked
again at every pass because the chunk's own points take memory between them.
An underestimate costs one halving, as above.

An out-of-memory error is recognised by the framework's exception type or
message without importing any framework here (the plugin stays light).
"""

from __future__ import annotations

import gc
import math
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import eagerpy as ep

from attacks import frameworks

__all__ = [
    "ACTIVATION_FACTOR",
    "BLOCK_INPUT_BYTES",
    "DEVICE_BLOCK_SHARE",
    "MAX_BLOCK",
    "Blocks",
    "block_size_for",
    "device_block_size",
    "forward_blocks",
    "free_device_bytes",
    "is_out_of_memory",
]

#: Input bytes one block of forward passes may take: 16384 digits, 5461
#: CIFAR-size images (capped at :data:`MAX_BLOCK`), 111 images of 3x224x224.
BLOCK_INPUT_BYTES = 64 * 2**20
#: Largest block, whatever the input size (per-call overhead is gone long before).
MAX_BLOCK = 4096
#: Memory a no-grad forward pass keeps alive per input, in multiples of the
#: input's bytes, for sizing blocks from free device memory. Conservative: a
#: CIFAR ResNet widens 3 channels to 64 at full resolution (21 times the
#: input per tensor, a few tensors alive at once), an ImageNet ResNet-50
#: holds about 40 times its input (23 MiB per 224x224 image).
ACTIVATION_FACTOR = 128
#: Share of the free device memory one block of forward passes may take.
DEVICE_BLOCK_SHARE = 0.5

T = TypeVar("T")

#: Exception type names the frameworks use for exhausted device memory.
_OOM_TYPES = frozenset(
    {
        "OutOfMemoryError",  # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError)
        "ResourceExhaustedError",  # tf.errors.ResourceExhaustedError
        "MemoryError",  # NumPy on the host
    }
)
#: Message fragments of out-of-memory errors raised as plain RuntimeErrors
#: (JAX/XLA's ``RESOURCE_EXHAUSTED``, older torch and cuDNN/cuBLAS failures).
_OOM_MESSAGES = (
    "RESOURCE_EXHAUSTED",
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says a framework ran out of (device) memory."""
    if any(cls.__name__ in _OOM_TYPES for cls in type(error).__mro__):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error)
    return any(fragment in text for fragment in _OOM_MESSAGES)


def block_size_for(
    point_shape: Sequence[int], itemsize: int, budget: int = BLOCK_INPUT_BYTES
) -> int:
    """Inputs per block so that a block's inputs take at most ``budget`` bytes."""
    point_bytes = max(1, math.prod(int(d) for d in point_shape) * int(itemsize))
    return int(max(1, min(MAX_BLOCK, budget // point_bytes)))


def device_block_size(
    point_shape: Sequence[int],
    itemsize: int,
    free_bytes: int,
    *,
    factor: float = ACTIVATION_FACTOR,
    share: float = DEVICE_BLOCK_SHARE,
) -> int:
    """Inputs per block so that a block's inputs and activations take ``share`` of ``free_bytes``.

    Each input is counted as its own bytes plus ``factor`` times them for the
    activations of a no-grad forward pass; at least 1, at most :data:`MAX_BLOCK`.
    """
    point_bytes = max(1, math.prod(int(d) for d in point_shape) * int(itemsize))
    per_point = point_bytes * (1.0 + factor)
    return int(max(1, min(MAX_BLOCK, int(max(0, free_bytes) * share // per_point))))


def free_device_bytes(x: ep.Tensor) -> int | None:
    """Memory ``x``'s accelerator could still give, or None on a CPU or where it is not known.

    PyTorch on CUDA: the device's free memory plus what torch's caching
    allocator holds unused (reserved but not allocated: torch reuses it
    before asking the device). JAX on an accelerator: its allocator's limit
    minus its use. TensorFlow does not say; it keeps the fixed input budget.
    """
    return frameworks.of(x).free_memory_bytes(x.raw)


def forward_blocks(
    x: ep.Tensor,
    itemsize: int,
    max_batch: int | None = None,
    free: Callable[[ep.Tensor], int | None] | None = None,
) -> Blocks:
    """The test's blocks of forward passes over inputs like ``x``.

    Sized from the free device memory at every pass where the device tells
    it (:func:`device_block_size`), else by the fixed input budget
    (:func:`block_size_for`); never above ``max_batch``. ``free`` replaces
    :func:`free_device_bytes` (tests fake a GPU's memory with it).
    """
    query = free_device_bytes if free is None else free
    shape = tuple(int(d) for d in x.shape[1:])
    cap = max_batch or sys.maxsize
    if query(x) is None:
        return Blocks(min(block_size_for(shape, itemsize), cap))
    probe = x[:1]  # one input: the query needs the device, not the data

    def fit() -> int:
        return device_block_size(shape, itemsize, query(probe) or 0)

    return Blocks(min(MAX_BLOCK, cap), fit=fit)


def release_device_memory() -> None:
    """Give cached device memory back after an out-of-memory error (torch only).

    Torch keeps freed blocks in its caching allocator; without emptying it the
    smaller retry can fail on fragmentation. Imported lazily and only when
    torch is already loaded (a TF or JAX user never imports it).
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Blocks:
    """A block size that shrinks on out-of-memory and remembers what worked.

    One instance per test: once a block of 64 inputs ran out of memory, later
    passes of the same test start at 32 instead of failing again.

    Args:
        size: the first block size to try (:func:`block_size_for`), and the
            largest ever (after a halving, the halved size).
        fit: optional ``fit() -> int``, the largest block the memory allows
            now (:func:`forward_blocks`); asked at the start of every
            :meth:`run`, the block being the smaller of the two.
    """

    def __init__(self, size: int, fit: Callable[[], int] | None = None) -> None:
        if size < 1:
            raise ValueError(f"block size must be >= 1, got {size}")
        self._cap = int(size)
        self._fit = fit
        self._current = self._cap if fit is None else max(1, min(self._cap, int(fit())))
        #: How often a block was halved (reported, so a user sees it happened).
        self.halvings = 0
        #: The largest block a pass used (0 before the first).
        self.largest = 0

    @property
    def size(self) -> int:
        """The block size of the latest pass (before any: what the first would use)."""
        return self._current

    def run(self, fn: Callable[[int, int], T], n: int) -> list[T]:
        """``fn(start, stop)`` over ``range(n)`` in blocks; a list of the blocks' results.

        On an out-of-memory error the block is halved and the same range run
        again; at one input per block the error is raised.
        """
        out: list[T] = []
        start = 0
        if self._fit is not None:
            self._current = max(1, min(self._cap, int(self._fit())))
        else:
            self._current = self._cap
        while start < n:
            stop = min(n, start + self._current)
            try:
                out.append(fn(start, stop))
            except Exception as error:  # re-raised below unless out of memory
                if not is_out_of_memory(error) or self._current <= 1:
                    raise
                retry = True
            else:
                retry = False
            if retry:
                # Outside the except block, so the traceback (and the tensors its
                # frames hold) is gone before the memory is released.
                self._cap = self._current = max(1, min(self._current, stop - start) // 2)
                self.halvings += 1
                release_device_memory()
                continue
            self.largest = max(self.largest, stop - start)
            start = stop
        return out

    def gather(self, fn: Callable[[int, int], ep.Tensor], n: int) -> ep.Tensor:
        """:meth:`run`, the blocks' tensors concatenated along the first axis (``n >= 1``)."""
        parts = self.run(fn, n)
        return parts[0] if len(parts) == 1 else ep.concatenate(parts, axis=0)

    def concatenate(self, fn: Callable[[ep.Tensor], ep.Tensor], points: ep.Tensor) -> ep.Tensor:
        """``fn`` over the first axis of ``points`` in blocks, results concatenated."""
        return self.gather(lambda i, j: fn(points[i:j]), points.shape[0])

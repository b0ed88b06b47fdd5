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

__all__ = [
    "BLOCK_INPUT_BYTES",
    "MAX_BLOCK",
    "Blocks",
    "block_size_for",
    "is_out_of_memory",
]

#: Input bytes one block of forward passes may take: 16384 digits, 5461
#: CIFAR-size images (capped at :data:`MAX_BLOCK`), 111 images of 3x224x224.
BLOCK_INPUT_BYTES = 64 * 2**20
#: Largest block, whatever the input size (per-call overhead is gone long before).
MAX_BLOCK = 4096

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
        size: the first block size to try (:func:`block_size_for`).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"block size must be >= 1, got {size}")
        self.size = int(size)
        #: How often a block was halved (reported, so a user sees it happened).
        self.halvings = 0

    def run(self, fn: Callable[[int, int], T], n: int) -> list[T]:
        """``fn(start, stop)`` over ``range(n)`` in blocks; a list of the blocks' results.

        On an out-of-memory error the block is halved and the same range run
        again; at one input per block the error is raised.
        """
        out: list[T] = []
        start = 0
        while start < n:
            stop = min(n, start + self.size)
            try:
                out.append(fn(start, stop))
            except Exception as error:  # re-raised below unless out of memory
                if not is_out_of_memory(error) or self.size <= 1:
                    raise
                retry = True
            else:
                retry = False
            if retry:
                # Outside the except block, so the traceback (and the tensors its
                # frames hold) is gone before the memory is released.
                self.size = max(1, min(self.size, stop - start) // 2)
                self.halvings += 1
                release_device_memory()
                continue
            start = stop
        return out

    def gather(self, fn: Callable[[int, int], ep.Tensor], n: int) -> ep.Tensor:
        """:meth:`run`, the blocks' tensors concatenated along the first axis (``n >= 1``)."""
        parts = self.run(fn, n)
        return parts[0] if len(parts) == 1 else ep.concatenate(parts, axis=0)

    def concatenate(self, fn: Callable[[ep.Tensor], ep.Tensor], points: ep.Tensor) -> ep.Tensor:
        """``fn`` over the first axis of ``points`` in blocks, results concatenated."""
        return self.gather(lambda i, j: fn(points[i:j]), points.shape[0])

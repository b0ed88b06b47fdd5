"""PyTorch: devices, ``torch.autograd.grad``, per-device generators, the global RNG.

Imported only when a torch tensor or module is met (through
:func:`attacks.frameworks.of`), so importing it imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import eagerpy as ep
import numpy as np
import torch

from attacks.frameworks.base import Framework, Generator, LossFn


class _TorchGenerator(Generator):
    def __init__(self, seed: int, device: Any) -> None:
        self._device = device
        self._gen = torch.Generator(device=device)
        self._gen.manual_seed(seed)

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any) -> Any:
        out = torch.rand(shape, generator=self._gen, device=self._device, dtype=dtype)
        return out * (high - low) + low

    def normal(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return torch.randn(shape, generator=self._gen, device=self._device, dtype=dtype)


def module_device(module: Any) -> Any:
    """The device of a torch module's first parameter or buffer (CPU when it has none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


class PyTorch(Framework):
    name = "torch"

    def dtype(self, name: str) -> Any:
        return getattr(torch, name)

    def device(self, raw: Any) -> Any:
        return getattr(raw, "device", None)

    def free_memory_bytes(self, raw: Any) -> int | None:
        """CUDA: the device's free memory plus what torch's caching allocator holds unused.

        Reserved but unallocated memory counts: torch reuses it before asking
        the device for more.
        """
        if raw.device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(raw.device)
        cached = torch.cuda.memory_reserved(raw.device) - torch.cuda.memory_allocated(raw.device)
        return int(free) + max(0, int(cached))

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device or "cpu")

    def to_numpy(self, raw: Any) -> np.ndarray:
        raw = raw.detach().cpu()
        if raw.dtype == torch.bfloat16:  # NumPy has no bfloat16: autocast outputs
            raw = raw.float()
        return np.asarray(raw.numpy())

    def adopt(self, raw: Any, like: Any) -> Any:
        return raw.detach().to(like.device)

    def private_copy(self, raw: Any) -> Any:
        return raw.detach().clone()

    def value_and_grad(
        self, loss_fn: LossFn, x: ep.Tensor
    ) -> tuple[ep.Tensor, ep.Tensor, ep.Tensor]:
        """Through ``torch.autograd.grad``, so no gradient lands in the model's parameters.

        EagerPy 0.30.0 calls ``backward()``, which accumulates gradients there.
        """
        with torch.enable_grad():
            x_ = x.raw.detach().requires_grad_(True)
            loss, aux = loss_fn(ep.astensor(x_))
            (grad,) = torch.autograd.grad(loss.raw, x_)
        aux_raw = aux.raw
        aux = ep.astensor(aux_raw.detach()) if hasattr(aux_raw, "detach") else aux
        return ep.astensor(loss.raw.detach()), aux, ep.astensor(grad)

    def stop_gradient(self, raw: Any) -> Any:
        return raw.detach()

    def no_grad(self) -> AbstractContextManager[Any]:
        return torch.no_grad()

    def generator(self, seed: int, like: Any) -> Generator:
        return _TorchGenerator(seed, like.device)

    @contextmanager
    def same_randomness(self, seed: int) -> Iterator[Callable[[], None]]:
        """``torch.manual_seed`` reaches every CUDA device: fork them all when CUDA is in use."""

        def reseed() -> None:
            torch.manual_seed(seed)

        cuda = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        devices = list(range(torch.cuda.device_count())) if cuda else []
        with torch.random.fork_rng(devices=devices):
            yield reseed

    def seed_global(self, seed: int) -> Callable[[], None] | None:
        """Torch's CPU generator and every initialized CUDA device's.

        ``torch.manual_seed`` is not used: with CUDA not yet initialized it
        queues a seed for CUDA's initialization, which would outlive the block.
        """
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # type: ignore[no-untyped-call]
        torch.default_generator.manual_seed(seed)
        if cuda is not None:
            torch.cuda.manual_seed_all(seed)

        def restore() -> None:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

        return restore

    def clamp(self, raw: Any, lower: Any, upper: Any) -> Any:
        return torch.clamp(raw, lower, upper)

    def add_product(self, raw: Any, a: Any, b: Any) -> Any:
        return torch.addcmul(raw, a, b)

    def diagonal(self, raw: Any) -> Any:
        return raw.diagonal(dim1=1, dim2=2)

    def batched_matmul(
        self, a: Any, b: Any, transpose_a: bool = False, transpose_b: bool = False
    ) -> Any:
        a = a.transpose(1, 2) if transpose_a else a
        b = b.transpose(1, 2) if transpose_b else b
        return a @ b

    def solve(self, a: Any, b: Any) -> Any:
        return torch.linalg.solve(a, b)

    def native_model(self, forward: Callable[[Any], Any], holds: Any, name: str) -> Any:
        """An ``nn.Module`` in eval mode that registers ``holds`` (when it is a module).

        Registered, the user's module moves with ``.to()`` and shows in
        ``.parameters()``. ``.train()``/``.eval()`` set only the wrapper's flag:
        an attack's ``.eval()`` (torchattacks and many scripts call it) must
        not switch the user's model out of the mode it was left in.
        """
        return _FunctionModule(forward, holds, name).eval()


class _FunctionModule(torch.nn.Module):
    """A function of native tensors as a module; the user's module registered inside."""

    def __init__(self, forward: Callable[[Any], Any], holds: Any, name: str) -> None:
        super().__init__()
        self._function = forward
        self._name = name
        if isinstance(holds, torch.nn.Module):
            self.defended = holds

    def _get_name(self) -> str:  # what repr(module) starts with
        return self._name

    def forward(self, x: Any) -> Any:
        return self._function(x)

    def train(self, mode: bool = True) -> _FunctionModule:
        self.training = mode
        return self


FRAMEWORK = PyTorch()

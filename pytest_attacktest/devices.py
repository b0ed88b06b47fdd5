"""``--attack-test-device``: move torch models and inputs; one GPU per xdist worker.

Why: a test file written on a laptop (``model = Net()``, CPU tensors) should
run on the CI's GPU unchanged, and under pytest-xdist each worker should take
its own GPU. Only PyTorch models are *moved*: a module moves in place with
``.to(device)``. TensorFlow and JAX place arrays through their own device
scopes, which a plugin cannot apply around a user's model without wrapping
it; for those the option is not applied, and a warning says so once.

One GPU per worker works for every framework, though, because it happens
before any of them starts: with ``--attack-test-device cuda`` under
``pytest -n N``, each worker sets ``CUDA_VISIBLE_DEVICES`` to one GPU of the
visible ones (:func:`pin_worker`, called from the plugin's earliest hook,
before conftest files are imported). CUDA reads that variable when a framework
first initialises it, so torch, TensorFlow and JAX in that worker all see that
one GPU, as device 0. The GPUs are counted without importing a framework: the
entries of ``CUDA_VISIBLE_DEVICES`` when it is set (so ``CUDA_VISIBLE_DEVICES=3,5
pytest -n 2`` gives the workers GPUs 3 and 5), else the GPUs ``nvidia-smi -L``
lists (by UUID, which is unambiguous whatever ``CUDA_DEVICE_ORDER`` says).
With no GPU the workers run attack tests on the CPU, and the summary says so.

Nothing here imports torch: an object can only be a torch module or tensor
when torch is already in ``sys.modules``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import pytest

from pytest_attacktest.engine.errors import AttackTestError

__all__ = [
    "SIMULATED_GPUS_ENV",
    "VISIBLE_DEVICES_ENV",
    "WORKER_OUTPUT_KEY",
    "DeviceError",
    "DeviceNotAppliedWarning",
    "VisibleGpus",
    "WorkerDevice",
    "assign_gpu",
    "early_value",
    "list_gpus",
    "mapping_lines",
    "parse_nvidia_smi",
    "parse_visible_devices",
    "pin_worker",
    "pin_xdist_worker",
    "record_xdist_worker",
    "spread_device",
    "started_as_xdist_worker",
    "to_device",
]

#: The variable CUDA reads to decide which GPUs a process sees (and in which order).
VISIBLE_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"

#: For tests on machines without GPUs: when set, its comma-separated ids replace
#: what ``nvidia-smi -L`` would list ("" simulates a machine without GPUs).
#: ``CUDA_VISIBLE_DEVICES`` still takes precedence, as it does for the real query.
SIMULATED_GPUS_ENV = "PYTEST_ATTACKTEST_SIMULATED_GPUS"

#: Seconds ``nvidia-smi -L`` may take before the GPUs are taken as unknown (none).
NVIDIA_SMI_TIMEOUT = 20.0

Runner = Callable[[list[str]], str]


class DeviceError(AttackTestError, RuntimeError):
    """The model or the inputs cannot be moved to the requested device."""


class DeviceNotAppliedWarning(UserWarning):
    """``--attack-test-device`` was given but the model is not a torch module."""


# --------------------------------------------------------------------------- GPU per worker


@dataclass(frozen=True)
class VisibleGpus:
    """The GPUs a process may use, found without importing a framework.

    Attributes:
        ids: the entries to put in ``CUDA_VISIBLE_DEVICES``, one per GPU
            (indices, or ``GPU-``/``MIG-`` UUIDs).
        names: a readable name per id ("" when unknown).
        source: where the list came from: ``"CUDA_VISIBLE_DEVICES"``,
            ``"nvidia-smi"`` or ``"simulated"`` (:data:`SIMULATED_GPUS_ENV`).
        note: why the list is empty, when it is.
    """

    ids: tuple[str, ...]
    names: tuple[str, ...]
    source: str
    note: str = ""


def parse_visible_devices(value: str) -> tuple[str, ...]:
    """The GPUs a ``CUDA_VISIBLE_DEVICES`` value selects, as CUDA reads it.

    Entries are comma-separated indices or UUIDs; CUDA stops at the first
    invalid entry, so ``"3,-1,5"`` selects only GPU 3 and ``""`` or ``"-1"``
    none.
    """
    ids: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry or entry.startswith("-"):
            break
        ids.append(entry)
    return tuple(ids)


_GPU_LINE = re.compile(r"^GPU (\d+): (.*?)(?: \(UUID: ([^)]+)\))?\s*$")
_MIG_LINE = re.compile(r"^\s+MIG (.*?)\s+Device\s+(\d+): \(UUID: ([^)]+)\)\s*$")


def parse_nvidia_smi(output: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """GPU ids and names from ``nvidia-smi -L`` output.

    Each ``GPU i: name (UUID: GPU-...)`` line gives its UUID (its index when no
    UUID is printed). A GPU in MIG mode is listed with its MIG instances below
    it; those are what CUDA can use, so they replace the GPU.
    """
    gpus: list[tuple[str, str, list[tuple[str, str]]]] = []
    for line in output.splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu:
            index, name, uuid = gpu.groups()
            gpus.append((uuid or index, name.strip(), []))
            continue
        mig = _MIG_LINE.match(line)
        if mig and gpus:
            profile, _, uuid = mig.groups()
            gpus[-1][2].append((uuid, f"{gpus[-1][1]} MIG {profile.strip()}"))
    ids: list[str] = []
    names: list[str] = []
    for gpu_id, name, migs in gpus:
        for entry_id, entry_name in migs or [(gpu_id, name)]:
            ids.append(entry_id)
            names.append(entry_name)
    return tuple(ids), tuple(names)


def _run_nvidia_smi(command: list[str]) -> str:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=True
    )
    return done.stdout


def list_gpus(environ: Mapping[str, str] | None = None, run: Runner | None = None) -> VisibleGpus:
    """The visible GPUs: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``.

    ``run`` executes a command and returns its standard output (tests pass a
    fake); a missing or failing ``nvidia-smi`` means no GPU, with a note.
    """
    env = os.environ if environ is None else environ
    if VISIBLE_DEVICES_ENV in env:
        ids = parse_visible_devices(env[VISIBLE_DEVICES_ENV])
        note = "" if ids else f"{VISIBLE_DEVICES_ENV}={env[VISIBLE_DEVICES_ENV]!r} hides every GPU"
        return VisibleGpus(ids, ("",) * len(ids), VISIBLE_DEVICES_ENV, note)
    if SIMULATED_GPUS_ENV in env:
        ids = parse_visible_devices(env[SIMULATED_GPUS_ENV])
        note = "" if ids else f"{SIMULATED_GPUS_ENV} lists no GPU"
        return VisibleGpus(ids, ("simulated",) * len(ids), "simulated", note)
    try:
        output = (run or _run_nvidia_smi)(["nvidia-smi", "-L"])
    except FileNotFoundError:
        return VisibleGpus(
            (), (), "nvidia-smi", "nvidia-smi not found and CUDA_VISIBLE_DEVICES unset"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return VisibleGpus((), (), "nvidia-smi", f"nvidia-smi -L failed: {exc}")
    ids, names = parse_nvidia_smi(output)
    return VisibleGpus(ids, names, "nvidia-smi", "" if ids else "nvidia-smi -L lists no GPU")


@dataclass(frozen=True)
class WorkerDevice:
    """Which GPU one xdist worker took (plain data: it travels to the controller).

    Attributes:
        worker: the worker's id, ``gw<i>``.
        gpu: the id written to the worker's ``CUDA_VISIBLE_DEVICES``, or
            ``None`` when the worker runs on the CPU.
        name: the GPU's name when known.
        source: where the list of GPUs came from (see :class:`VisibleGpus`).
        visible: every GPU the worker could choose from.
        note: anything the user should know (no GPU, shared GPU, pinned too late).
    """

    worker: str
    gpu: str | None
    name: str
    source: str
    visible: tuple[str, ...]
    note: str = ""

    @property
    def device(self) -> str:
        """The device attack tests use in this worker: ``cuda`` (its only GPU) or ``cpu``."""
        return "cpu" if self.gpu is None else "cuda"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "visible": list(self.visible), "device": self.device}


def _worker_index(worker: str) -> int:
    if not (worker.startswith("gw") and worker[2:].isdigit()):
        raise ValueError(f"not a pytest-xdist worker id: {worker!r} (expected gw<number>)")
    return int(worker[2:])


def assign_gpu(worker: str, worker_count: int, gpus: VisibleGpus) -> WorkerDevice:
    """The GPU of worker ``gw<i>``: the ``i % len(gpus)``-th visible one, or none (CPU).

    With more workers than GPUs, workers share GPUs round-robin, which the note says.
    """
    index = _worker_index(worker)
    if not gpus.ids:
        note = f"no GPU visible ({gpus.note}): attack tests in this worker run on the CPU"
        return WorkerDevice(worker, None, "", gpus.source, gpus.ids, note)
    slot = index % len(gpus.ids)
    note = ""
    if worker_count > len(gpus.ids):
        note = f"{worker_count} workers share {len(gpus.ids)} GPU(s)"
    return WorkerDevice(worker, gpus.ids[slot], gpus.names[slot], gpus.source, gpus.ids, note)


def _cuda_already_initialised() -> bool:
    """True when torch in this process has already initialised CUDA (too late to pin)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    is_initialized = getattr(cuda, "is_initialized", None)
    return bool(is_initialized()) if callable(is_initialized) else False


def pin_worker(
    worker: str,
    worker_count: int,
    environ: MutableMapping[str, str] | None = None,
    run: Runner | None = None,
) -> WorkerDevice:
    """Give this xdist worker its own GPU: set ``CUDA_VISIBLE_DEVICES`` to it.

    Must run before any framework initialises CUDA in the worker (the plugin
    calls it from ``pytest_load_initial_conftests``). If torch has already
    initialised CUDA, the variable no longer applies to it, and the note says
    so; torch's device is then chosen by :func:`spread_device`, with the same
    round-robin over the same ordering when ``CUDA_VISIBLE_DEVICES`` was set.
    """
    env = os.environ if environ is None else environ
    assigned = assign_gpu(worker, worker_count, list_gpus(env, run))
    if assigned.gpu is None:
        return assigned
    env[VISIBLE_DEVICES_ENV] = assigned.gpu
    if _cuda_already_initialised():
        late = (
            "torch had initialised CUDA before the plugin could pin the GPU (a conftest or "
            "plugin used CUDA at import); torch in this worker still sees every GPU"
        )
        note = f"{assigned.note}; {late}" if assigned.note else late
        return replace(assigned, note=note)
    return assigned


def mapping_lines(workers: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per worker for the terminal summary: ``gw0 -> GPU 3 (...)``."""
    lines = []
    for worker in sorted(workers, key=lambda w: (len(w), w)):
        entry = workers[worker]
        if entry.get("gpu") is None:
            target = "CPU"
        else:
            name = f", {entry['name']}" if entry.get("name") else ""
            target = f"GPU {entry['gpu']} ({entry.get('source')}{name})"
        note = f"  [{entry['note']}]" if entry.get("note") else ""
        lines.append(f"{worker} -> {target}{note}")
    return lines


# --------------------------------------------------------------------------- moving torch


def spread_device(device: str, worker_index: int | None, device_count: int) -> str:
    """Give each pytest-xdist worker its own GPU: bare ``"cuda"`` becomes ``cuda:i``.

    Worker ``gw<i>`` takes ``cuda:(i % device_count)``. An explicit index
    (``cuda:1``), another device type, a run without xdist or no visible GPU
    leave ``device`` unchanged. After :func:`pin_worker` torch sees one GPU,
    so this gives ``cuda:0``.
    """
    if device != "cuda" or worker_index is None or device_count < 1:
        return device
    return f"cuda:{worker_index % device_count}"


def _torch_module(model: Any) -> Any:
    """The torch module to move: ``model`` itself or the one an ``attacks.Model`` wraps.

    One level only: the ``.native`` of an ``attacks.Model``, not the inner
    model of a BPDA or EOT wrapper (whose own ``.native`` is a function).
    """
    if "torch" not in sys.modules:
        return None
    from attacks import backend

    return backend.torch_module(model.native if _is_attacks_model(model) else model, through=())


def _is_attacks_model(model: Any) -> bool:
    """Whether ``model`` is an ``attacks.Model``, without importing ``attacks``."""
    models = sys.modules.get("attacks.models")
    return models is not None and isinstance(model, models.Model)


def to_device(
    model: Any, x: Any, y: Any, device: str, worker_index: int | None = None
) -> tuple[Any, Any, Any, str | None]:
    """Move a torch model (in place, as ``Module.to`` does) and torch inputs to ``device``.

    Returns:
        ``(model, x, y, used)``: ``used`` is the device moved to (after
        :func:`spread_device`), or ``None`` when the model is not a torch
        module and nothing was moved.

    Raises:
        DeviceError: the device does not exist for torch (e.g. ``cuda`` on a
            machine without a GPU), with what to do.
    """
    module = _torch_module(model)
    if module is None:
        return model, x, y, None
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"--attack-test-device {device}: torch sees no CUDA device "
            "(torch.cuda.is_available() is False); run on a machine with a GPU or pass "
            "--attack-test-device cpu"
        )
    if device.startswith("cuda"):
        device = spread_device(device, worker_index, torch.cuda.device_count())
    try:
        target = torch.device(device)
        module.to(target)
        moved = [v.to(target) if isinstance(v, torch.Tensor) else v for v in (x, y)]
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise DeviceError(f"--attack-test-device {device}: cannot move to it: {exc}") from exc
    return model, moved[0], moved[1], device


# --------------------------------------------------------------------------- pytest glue

#: The key of a worker's :class:`WorkerDevice` in xdist's ``workeroutput`` (reaches the controller).
WORKER_OUTPUT_KEY = "attack_test_device"

_assigned_key = pytest.StashKey[WorkerDevice]()
_visible_before_key = pytest.StashKey["str | None"]()


def early_value(config: pytest.Config, dest: str, ini: str) -> Any:
    """An option's raw value before ``config.option`` is filled: command line, else ini."""
    cli = getattr(config.known_args_namespace, dest, None)
    if cli is not None:
        return cli
    try:
        return config.getini(ini)
    except (ValueError, KeyError):
        return None


def _startup_environ() -> dict[str, str] | None:
    """The environment this process was started with (Linux), or ``None``."""
    try:
        with open("/proc/self/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    pairs = (os.fsdecode(entry).partition("=") for entry in raw.split(b"\0") if entry)
    return {key: value for key, _, value in pairs}


def started_as_xdist_worker(
    environ: Mapping[str, str] | None = None, startup: Mapping[str, str] | None = None
) -> bool:
    """True in a pytest-xdist worker process, before its config exists.

    xdist sets ``PYTEST_XDIST_WORKER`` and a fresh ``PYTEST_XDIST_TESTRUNUID``
    inside the worker, just before building its config. A subprocess of a
    worker (a test that runs pytest) inherits both, so what tells them apart is
    whether the run id differs from the one the process started with (on Linux
    ``/proc/self/environ``, which ``os.environ`` updates do not touch; where
    that cannot be read, every process with the variables counts as a worker).
    """
    env = os.environ if environ is None else environ
    run_id = env.get("PYTEST_XDIST_TESTRUNUID")
    if not run_id or not env.get("PYTEST_XDIST_WORKER"):
        return False
    if startup is None:
        startup = _startup_environ()
        if startup is None:
            return True
    return startup.get("PYTEST_XDIST_TESTRUNUID") != run_id


def pin_xdist_worker(
    config: pytest.Config, *, enable: tuple[str, str], device: tuple[str, str]
) -> None:
    """In an xdist worker of a run with ``--attack-test-device cuda``: :func:`pin_worker`, once.

    ``enable`` and ``device`` name the options' ``(dest, ini)``. The plugin
    calls this from ``pytest_load_initial_conftests``, before conftest files
    (which may import torch, TensorFlow or JAX) are loaded. ``workerinput``
    does not exist yet then, so the worker is recognised by
    :func:`started_as_xdist_worker`; :func:`record_xdist_worker` undoes the
    pin in the one process that can fool it, a pytest run in-process inside a
    worker.
    """
    if _assigned_key in config.stash or not started_as_xdist_worker():
        return
    if str(early_value(config, *device) or "").strip() != "cuda":
        return
    if not early_value(config, *enable):
        return
    worker = os.environ["PYTEST_XDIST_WORKER"]
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    before = os.environ.get(VISIBLE_DEVICES_ENV)
    try:
        assigned = pin_worker(worker, count)
    except ValueError:  # not an xdist worker id: leave everything as it is
        return
    config.stash[_assigned_key] = assigned
    config.stash[_visible_before_key] = before


def record_xdist_worker(config: pytest.Config, session: Any, *, is_worker: bool) -> Any:
    """Send this worker's GPU to the controller; returns the session, on the CPU if no GPU.

    ``session`` is the run's :class:`~pytest_attacktest.session.AttackTestSession`.
    A process that only looked like a worker (an in-process pytest started
    inside an xdist worker) gets its ``CUDA_VISIBLE_DEVICES`` back.
    """
    assigned = config.stash.get(_assigned_key, None)
    if assigned is None:
        return session
    if not is_worker:
        before = config.stash.get(_visible_before_key, None)
        if before is None:
            os.environ.pop(VISIBLE_DEVICES_ENV, None)
        else:
            os.environ[VISIBLE_DEVICES_ENV] = before
        del config.stash[_assigned_key]
        return session
    workeroutput: dict[str, Any] = config.workeroutput  # type: ignore[attr-defined]
    workeroutput[WORKER_OUTPUT_KEY] = assigned.to_dict()
    return replace(session, device=assigned.device)

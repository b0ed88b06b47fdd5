"""What every benchmark records and prints: metadata, a Markdown table, a JSON file.

Why shared: a figure is worth keeping only with the device, the versions, the
date, the seed, the commit and the command that produced it, and with the
machine's load when it was a shared CPU. Each script here collects those the
same way, prints its rows as a Markdown table that can be pasted into
``benchmarks/RESULTS.md`` unchanged, and writes ``{"metadata", "rows", ...}``
as JSON with ``--json``.

Use from a script in this package::

    from benchmarks import common
    parser = argparse.ArgumentParser()
    common.add_common_arguments(parser, default_device="cpu")
    args = parser.parse_args()
    common.set_threads(args)
    meta = common.metadata("my benchmark", args, settings={...})
    ...
    print(common.markdown_table(rows, columns))
    common.finish(meta, rows, args.json)

Only the standard library is imported at module level; torch and friends are
looked up when the metadata is collected.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: Packages whose versions every result records when installed.
VERSIONED = (
    "torch",
    "numpy",
    "eagerpy",
    "scikit-learn",
    "scipy",
    "tensorflow",
    "jax",
    "foolbox",
    "torchattacks",
)


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=HERE, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_commit() -> dict[str, Any]:
    """The commit, and whether tracked files differ from it (a figure from a dirty tree)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def versions() -> dict[str, str]:
    """Python, the platform and every installed package of :data:`VERSIONED`."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def device_info(device: str) -> dict[str, Any]:
    """What ``device`` is: the GPU's name and memory, or the CPU, its cores and torch threads."""
    info: dict[str, Any] = {"requested": device}
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(
            type="cuda",
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=list(torch.cuda.get_device_capability(index)),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
    else:
        info.update(type="cpu", name=cpu_name(), cpu_count=os.cpu_count())
        if torch is not None:
            info["torch_threads"] = torch.get_num_threads()
    return info


def describe_device(info: dict[str, Any]) -> str:
    """One line: ``NVIDIA H100 (79.1 GiB, CUDA 12.4)`` or ``CPU (name, 2 cores, ...)``."""
    if info.get("type") == "cuda":
        return f"{info['name']} ({info['memory_gib']} GiB, CUDA {info['cuda']})"
    threads = info.get("torch_threads")
    extra = f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else ""
    return f"CPU ({info['name']}, {info['cpu_count']} cores{extra})"


def add_common_arguments(parser: argparse.ArgumentParser, default_device: str) -> None:
    """``--device``, ``--seed``, ``--threads`` and ``--json``, the same in every benchmark."""
    parser.add_argument(
        "--device", default=default_device, help=f"cpu or cuda[:i] (default {default_device})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data, model and test")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on a CPU, where a shared machine makes more "
        "threads noise; torch's own default with CUDA)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (one by default on the CPU) before anything is timed."""
    import torch

    threads = args.threads
    if threads is None and not str(args.device).startswith("cuda"):
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def metadata(benchmark: str, args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to judge and reproduce a result, collected at its start."""
    return {
        "benchmark": benchmark,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command(),
        "seed": args.seed,
        "device": device_info(str(args.device)),
        "versions": versions(),
        "git": git_commit(),
        "load_average_at_start": load_average(),
        "settings": settings,
        "started": time.time(),
    }


def header_lines(meta: dict[str, Any]) -> list[str]:
    """The metadata as the few lines printed above a table."""
    v = meta["versions"]
    packages = ", ".join(f"{k} {v[k]}" for k in v if k not in ("python", "platform"))
    git = meta["git"]
    commit = (git["commit"] or "unknown")[:10] + (" (uncommitted changes)" if git["dirty"] else "")
    return [
        f"{meta['benchmark']}: {meta['date_utc']}, seed {meta['seed']}, commit {commit}",
        f"device: {describe_device(meta['device'])}; load average {meta['load_average_at_start']}",
        f"python {v['python']}; {packages}",
        f"command: {meta['command']}",
    ]


@dataclass(frozen=True)
class Column:
    """A table column: its heading, the row key, and how to show the value."""

    title: str
    key: str
    fmt: Callable[[Any], str] = str
    right: bool = True


def fixed(digits: int) -> Callable[[Any], str]:
    """A formatter with ``digits`` decimals that shows missing values as ``-``."""

    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.{digits}f}"

    return fmt


def ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as a Markdown table whose columns line up in a terminal, too."""
    cells = [[c.fmt(row.get(c.key)) for c in columns] for row in rows]
    widths = [max([len(c.title), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Iterable[str]) -> str:
        parts = [
            v.rjust(w) if c.right else v.ljust(w)
            for v, w, c in zip(values, widths, columns, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if c.right else "-" * (w + 2)
            for w, c in zip(widths, columns, strict=True)
        )
        + "|"
    )
    return "\n".join([line(c.title for c in columns), rule, *(line(r) for r in cells)])


def _plain(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null, tuples lists, paths text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def command(argv: Sequence[str] | None = None) -> str:
    """The command line of this run (``argv``: ``sys.argv``), as it was typed.

    ``python -m benchmarks.<name> ...`` when the script ran as a module of this
    package, else ``python <argv[0]> ...``.
    """
    argv = list(sys.argv if argv is None else argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None) or ""
    if name.startswith("benchmarks."):
        return shlex.join(["python", "-m", name, *argv[1:]])
    return shlex.join(["python", *argv])


def finish(
    meta: dict[str, Any], rows: Sequence[dict[str, Any]], path: Path | None, **extra: Any
) -> dict[str, Any]:
    """Close the metadata (load and wall time at the end); write the JSON when asked."""
    meta["load_average_at_end"] = load_average()
    meta["wall_seconds"] = round(time.time() - meta.pop("started", time.time()), 1)
    document = _plain({"metadata": meta, "rows": list(rows), **extra})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    print(f"load average at the end {meta['load_average_at_end']}; {meta['wall_seconds']} s in all")
    return document


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a timer stops when the work is done."""
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda"):
        torch.cuda.synchronize()

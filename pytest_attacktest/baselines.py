"""Baselines: save a run's attack-test figures, compare a later run, fail on regressions.

The pytest-benchmark pattern, for attack strength instead of speed:
``--attack-test-save NAME`` stores each test's figures (verdict, ASR,
inconclusive samples, robust accuracy when the test makes a claim, time) in
``<storage>/<machine-id>/NNNN_NAME.json``; ``--attack-test-autosave`` does
the same after every run under a timestamped name; ``--attack-test-compare
[NAME]`` loads the newest baseline of this machine (of that name, or of any
name), prints a comparison table, and ``--attack-test-compare-fail
FIELD:LIMIT`` fails the session when a figure got worse by more than the
limit.

Baselines are kept per machine, as pytest-benchmark keeps
``.benchmarks/<machine-id>/``: a ``time:`` rule that compared a laptop with a
CI runner would measure the hardware, not the attack. The machine id
(:func:`machine_id`) is pytest-benchmark's (system, Python implementation and
version, word size) plus the CPU model. The versions of the ML frameworks are
not in it on purpose: a new library version that weakens an attack is one of
the drifts a baseline exists to catch, so they are stored in the baseline's
metadata and a comparison across versions says so (:func:`framework_changes`).
Baselines saved before this layout (files directly in the storage folder)
are still found, with a note, when this machine's folder has no match.

Why this exists beside the binarization test's own threshold: an attack can
lose strength (a refactoring, a new library version) and still clear the
threshold; the comparison catches the drift while the tests still pass.

Semantics, decided once here:

- Limits: ``N%`` is relative to the baseline's value, a plain number is an
  absolute difference (as pytest-benchmark). ``asr:5%`` fails when the ASR
  drops below 95% of the baseline's; ``asr:0.05`` when it drops by more than
  0.05. With a baseline of 0, a relative limit allows no worsening at all.
- Direction per field: ``asr`` and ``robust_accuracy`` regress when they drop
  (a weaker attack; a less robust model), ``inconclusive`` (the share of
  inconclusive samples) and ``time`` (seconds) when they rise.
- A figure the baseline has and the run lacks (an ASR that became undefined
  because no sample was conclusive, a claim that disappeared) is a regression:
  never a false pass. Tests missing from the run (``-k``, deselected) or new
  in it are listed, never failed: running a subset is normal. But with rules
  given, a run in which *no* test of the baseline ran (attack tests not
  enabled, a ``-k`` that matches none) fails: the gate was not evaluated.
- Tests are matched by node id; a test's figures are those of the terminal
  table's aggregate (worst ASR and robust accuracy over its fixture calls,
  summed counts and times).

Nothing here imports pytest or an ML framework: plain JSON and paths.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import numbers
import os
import platform
import re
import struct
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "COMPARE_FIELDS",
    "DEFAULT_STORAGE",
    "FORMAT_VERSION",
    "BaselineError",
    "CompareFail",
    "Comparison",
    "autosave_name",
    "baseline_document",
    "compare",
    "comparison_lines",
    "figures_of",
    "find_baseline",
    "framework_changes",
    "framework_versions",
    "load_baseline",
    "locate_baseline",
    "machine_id",
    "parse_baseline_name",
    "parse_compare_fail",
    "parse_compare_name",
    "save_baseline",
    "stored_baselines",
]

#: Version of a stored baseline's layout; a file of another version is refused.
FORMAT_VERSION = 1

#: Storage folder, relative to pytest's rootdir unless given absolute.
DEFAULT_STORAGE = ".attacktest"

#: The fields ``--attack-test-compare-fail`` accepts, and whether higher is better.
COMPARE_FIELDS: dict[str, bool] = {
    "asr": True,
    "robust_accuracy": True,
    "inconclusive": False,
    "time": False,
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FILE = re.compile(r"(\d{4,})_(.+)\.json")
_LIMIT = re.compile(r"([a-z_]+):(\d+(?:\.\d*)?|\.\d+)(%?)")


class BaselineError(Exception):
    """A baseline cannot be found, read or written; the message says what to do."""


def parse_baseline_name(value: str) -> str:
    """Parse ``--attack-test-save NAME`` and ``--attack-test-compare NAME``.

    Names become file names, so they are restricted to letters, digits, ``_``,
    ``.`` and ``-``. A stored baseline may also be named by its number
    (``0003``) or its file stem (``0003_main``).

    Raises:
        argparse.ArgumentTypeError: naming the bad value.
    """
    name = value.strip()
    if not _NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"invalid baseline name {value!r}: use letters, digits, '_', '.' and '-' "
            "(at most 64, e.g. main or before-refactor)"
        )
    return name


def parse_compare_name(value: str) -> str:
    """Parse ``--attack-test-compare [NAME]``: a name, or ``""`` (the flag alone) for the newest.

    Raises:
        argparse.ArgumentTypeError: naming the bad value.
    """
    return "" if not value.strip() else parse_baseline_name(value)


@dataclass(frozen=True)
class CompareFail:
    """One ``--attack-test-compare-fail FIELD:LIMIT`` rule.

    Attributes:
        field: one of :data:`COMPARE_FIELDS`.
        limit: the allowed worsening: a fraction of the baseline's value when
            ``relative`` (``5%`` is 0.05), else an absolute difference.
        relative: the limit was given with ``%``.
    """

    field: str
    limit: float
    relative: bool

    def __str__(self) -> str:
        return (
            f"{self.field}:{self.limit * 100:g}%"
            if self.relative
            else f"{self.field}:{self.limit:g}"
        )

    def worsening(self, old: float, new: float) -> float:
        """How much worse ``new`` is than ``old`` (negative: better)."""
        return (old - new) if COMPARE_FIELDS[self.field] else (new - old)

    def allowed(self, old: float) -> float:
        return self.limit * abs(old) if self.relative else self.limit

    def check(self, old: float | None, new: float | None) -> str | None:
        """Why ``old -> new`` is a regression under this rule, or ``None``."""
        if old is None:
            return None
        if new is None:
            return f"{self.field} {old:.4g} -> none ({self})"
        worse = self.worsening(old, new)
        if worse > self.allowed(old) + 1e-12:
            return f"{self.field} {old:.4g} -> {new:.4g} ({self})"
        return None


def parse_compare_fail(value: str) -> CompareFail:
    """Parse ``--attack-test-compare-fail``: ``FIELD:N%`` (relative) or ``FIELD:X`` (absolute).

    Raises:
        argparse.ArgumentTypeError: naming the bad value and the accepted fields.
    """
    fields = ", ".join(COMPARE_FIELDS)
    match = _LIMIT.fullmatch(value.strip())
    if match is None or match.group(1) not in COMPARE_FIELDS:
        raise argparse.ArgumentTypeError(
            f"invalid compare-fail {value!r}: expected FIELD:N% (relative to the baseline) or "
            f"FIELD:X (absolute), FIELD one of {fields}; e.g. asr:5% or robust_accuracy:0.02"
        )
    number = float(match.group(2))
    relative = match.group(3) == "%"
    return CompareFail(match.group(1), number / 100 if relative else number, relative)


# --------------------------------------------------------------------------- figures


def _min(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return min(present) if present else None


def figures_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of one test (an entry of ``RunResults``) that a baseline keeps."""
    reports: Sequence[Mapping[str, Any]] = entry.get("reports") or []
    claims = [r["claim"] for r in reports if r.get("claim")]
    n_samples = entry.get("n_samples")
    n_inconclusive = entry.get("n_inconclusive")
    share = n_inconclusive / n_samples if n_samples else None
    claim_verdicts = [c["verdict"] for c in claims]
    return {
        "outcome": entry.get("outcome"),
        "verdict": entry.get("verdict"),
        "asr": entry.get("asr"),
        "n_samples": n_samples,
        "n_inconclusive": n_inconclusive,
        "inconclusive": share,
        "robust_accuracy": _min(c.get("robust_accuracy") for c in claims),
        "claim": _min(c.get("claim") for c in claims),
        "claim_verdict": (
            None if not claims else "failed" if "failed" in claim_verdicts else "passed"
        ),
        "time": entry.get("seconds"),
        "calls": [
            {
                "attack": r.get("attack"),
                "verdict": r.get("verdict"),
                "asr": r.get("asr"),
                "n_inconclusive": r.get("n_inconclusive"),
                "n_samples": r.get("n_samples"),
                "seconds": r.get("seconds"),
            }
            for r in reports
        ],
    }


def baseline_document(
    entries: Iterable[Mapping[str, Any]], metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """What a baseline file holds: metadata and, by node id, each test's figures."""
    tests = {str(e["nodeid"]): figures_of(e) for e in entries}
    return {
        "format": FORMAT_VERSION,
        "metadata": dict(metadata),
        "tests": dict(sorted(tests.items())),
    }


# --------------------------------------------------------------------------- machines

#: The ML frameworks whose installed versions a baseline records.
FRAMEWORKS = ("torch", "tensorflow", "tensorflow-cpu", "keras", "jax", "jaxlib", "numpy", "eagerpy")


def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def machine_id() -> str:
    """The folder of this machine's baselines, e.g. ``Linux-CPython-3.12-64bit-Intel_Xeon_...``.

    pytest-benchmark's machine id (system, Python implementation, major.minor
    version, word size) plus the CPU model, so that two Linux machines with
    the same Python (a laptop and a CI runner) keep their timings apart. Only
    characters safe in a folder name; the CPU part is cut at 48 characters.
    """
    version = ".".join(platform.python_version_tuple()[:2])
    bits = struct.calcsize("P") * 8
    cpu = re.sub(r"[^A-Za-z0-9.]+", "_", _cpu_name()).strip("_.")[:48].strip("_.")
    parts = [platform.system() or "unknown", platform.python_implementation(), version]
    return "-".join([*parts, f"{bits}bit", cpu or "unknown-cpu"])


def framework_versions() -> dict[str, str]:
    """Installed versions of :data:`FRAMEWORKS` (from package metadata: nothing is imported)."""
    from importlib import metadata

    found = {}
    for name in FRAMEWORKS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def framework_changes(baseline: Mapping[str, Any], current: Mapping[str, str]) -> list[str]:
    """``torch 2.12.0 -> 2.13.0`` for each framework whose version differs from the baseline's.

    A baseline without recorded versions (saved before they were recorded)
    gives no changes.
    """
    saved = (baseline.get("metadata") or {}).get("frameworks")
    if not isinstance(saved, dict):
        return []
    return [
        f"{name} {saved.get(name, 'absent')} -> {current.get(name, 'absent')}"
        for name in sorted(set(saved) | set(current))
        if saved.get(name) != current.get(name)
    ]


def autosave_name(rootdir: Path, now: datetime.datetime | None = None) -> str:
    """The name ``--attack-test-autosave`` saves under: ``<commit>_<UTC time>``.

    pytest-benchmark names its autosaves after the commit and the date; here
    ``a1b2c3d_20261204T203741Z`` (``_uncommitted`` appended when the work tree
    has changes; the time alone outside a git repository). The file then gets
    its number as any saved baseline (``0004_a1b2c3d_20261204T203741Z.json``).
    """
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=rootdir, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if not commit or not re.fullmatch(r"[0-9a-f]{4,40}", commit):
        return stamp
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}_{stamp}" + ("_uncommitted" if dirty else "")


# --------------------------------------------------------------------------- storage


def stored_baselines(storage: Path) -> list[Path]:
    """Baseline files in ``storage``, oldest first (by their number)."""
    if not storage.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in storage.iterdir() if (m := _FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


#: How many numbers a save tries before giving up (each try lost a race to another save).
_SAVE_TRIES = 1000


def _next_number(storage: Path) -> int:
    """One more than the highest stored number (1 in an empty folder)."""
    taken = [int(m.group(1)) for p in stored_baselines(storage) if (m := _FILE.fullmatch(p.name))]
    return 1 + max(taken, default=0)


def _claim_file(storage: Path, name: str, text: str) -> Path:
    """Create the next free ``NNNN_name.json`` holding ``text``, atomically; return its path.

    Two runs that save at once (CI jobs sharing a storage folder) see the same
    highest number. Claiming a number with a plain write let the second
    overwrite the first. Here the complete file is written under a temporary
    name, then hard-linked to its number: ``os.link`` fails when that name
    exists, so each number is taken once, and a reader never sees a partial
    file. The loser takes the next number. Where hard links are not supported,
    ``O_CREAT | O_EXCL`` claims the number, then the text is written.
    """
    # Not mkstemp: its files are private (0600), and a hard link keeps the mode;
    # O_EXCL with 0666 gives the usual mode under the umask.
    temp = storage / f".saving-{uuid.uuid4().hex}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        use_link = True
        for _ in range(_SAVE_TRIES):
            path = storage / f"{_next_number(storage):04d}_{name}.json"
            try:
                if use_link:
                    os.link(temp, path)
                    return path
                claimed = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue  # another save took this number first
            except OSError:
                if not use_link:
                    raise
                use_link = False  # no hard links on this file system: O_EXCL from now on
                continue
            with os.fdopen(claimed, "w", encoding="utf-8") as handle:
                handle.write(text)
            return path
    finally:
        os.unlink(temp)
    raise BaselineError(
        f"cannot save the baseline in {storage}: {_SAVE_TRIES} numbers in a row were taken "
        "by other saves"
    )


def save_baseline(storage: Path, name: str, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as the next ``NNNN_name.json`` in ``storage`` (created if needed).

    Safe against concurrent saves: each gets its own number and file (see
    :func:`_claim_file`).

    Raises:
        BaselineError: the folder cannot be created or written.
    """
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    try:
        storage.mkdir(parents=True, exist_ok=True)
        return _claim_file(storage, name, text)
    except OSError as exc:
        raise BaselineError(f"cannot save the baseline in {storage}: {exc}") from None


def find_baseline(storage: Path, name: str | None) -> Path:
    """The baseline to compare with: the newest one, or the newest of that name.

    ``name`` may be a saved name (``main``), a number (``3`` or ``0003``) or a
    file stem (``0003_main``).

    Raises:
        BaselineError: nothing stored, or no match (listing what is stored).
    """
    files = stored_baselines(storage)
    if not files:
        raise BaselineError(
            f"no baseline stored in {storage}: save one first with --attack-test-save NAME "
            "(or point --attack-test-storage at the folder that holds them)"
        )
    if not name:
        return files[-1]
    matches = []
    for path in files:
        match = _FILE.fullmatch(path.name)
        assert match is not None
        number, saved = match.groups()
        if name in (saved, path.stem) or (name.isdigit() and int(name) == int(number)):
            matches.append(path)
    if not matches:
        available = ", ".join(p.stem for p in files[-10:])
        raise BaselineError(
            f"no baseline named {name!r} in {storage}; stored (newest last): {available}"
        )
    return matches[-1]


def locate_baseline(storage: Path, name: str | None, machine: str) -> tuple[Path, str | None]:
    """The baseline to compare with, in this machine's folder, else in the old flat layout.

    Returns the path and a note for the terminal when the baseline came from
    the old layout (files directly in ``storage``, saved before baselines were
    kept per machine). A name found in this machine's folder always wins.

    Raises:
        BaselineError: no match in either place; the message names this
            machine's folder and the other machines that have baselines.
    """
    folder = storage / machine
    try:
        return find_baseline(folder, name), None
    except BaselineError as exc:
        mine = exc
    if stored_baselines(storage):
        try:
            path = find_baseline(storage, name)
        except BaselineError:
            pass
        else:
            return path, (
                f"baseline {path.name} read from the old flat layout of {storage}; new "
                f"baselines are saved per machine in {folder}"
            )
    others = (
        sorted(
            p.name
            for p in storage.iterdir()
            if p.is_dir() and p.name != machine and stored_baselines(p)
        )
        if storage.is_dir()
        else []
    )
    message = f"{mine} (this machine's folder, {machine})"
    if others:
        message += (
            f"; other machines have baselines: {', '.join(others[:5])} (timings of another "
            "machine do not compare; copy a file into this machine's folder to compare anyway)"
        )
    raise BaselineError(message)


def load_baseline(path: Path) -> dict[str, Any]:
    """Read a baseline file and check every field the comparison reads.

    Why check here: the file is data from outside the run (edited by hand,
    truncated, merged badly). A field of the wrong type (``"asr": "high"``)
    used to crash the session's end, and a ``NaN`` (which Python's JSON
    reader accepts) compares as no change, a silent pass. Loading happens
    before the first test, so a bad baseline is a usage error at the start.

    Raises:
        BaselineError: unreadable, not JSON, another format version, or a
            malformed field (naming the file and the field).
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaselineError(f"cannot read the baseline {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise BaselineError(
            f"{path} is not a baseline of format {FORMAT_VERSION} (saved by another version "
            "of pytest-attacktest?); save a new one with --attack-test-save NAME"
        )
    problem = _malformed(document)
    if problem is not None:
        raise BaselineError(
            f"malformed baseline {path}: {problem}; fix the file, or save a new baseline "
            "with --attack-test-save NAME"
        )
    return document


#: The figures of a stored test that must be a number or null, with their range.
_SHARES = ("asr", "robust_accuracy", "inconclusive", "claim")
_COUNTS = ("n_samples", "n_inconclusive")
_WORDS = ("outcome", "verdict", "claim_verdict")


def _bad_number(value: object, low: float, high: float) -> bool:
    """Not null and not a finite real number in ``[low, high]`` (``true`` is no number)."""
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return True
    number = float(value)
    return not (math.isfinite(number) and low <= number <= high)


def _malformed(document: Mapping[str, Any]) -> str | None:
    """The first malformed field of a baseline document, in words, or ``None``."""
    if not isinstance(document.get("metadata", {}), dict):
        return f"'metadata' is {document['metadata']!r}; expected an object"
    tests = document.get("tests", {})
    if not isinstance(tests, dict):
        return f"'tests' is {tests!r}; expected an object of test id -> figures"
    for nodeid, figures in tests.items():
        where = f"tests[{nodeid!r}]"
        if not isinstance(figures, dict):
            return f"{where} is {figures!r}; expected an object of figures"
        for key in _SHARES:
            if _bad_number(figures.get(key), 0.0, 1.0):
                return f"{where}.{key} is {figures[key]!r}; expected a number in [0, 1] or null"
        if _bad_number(figures.get("time"), 0.0, math.inf):
            return f"{where}.time is {figures['time']!r}; expected seconds >= 0 or null"
        for key in _COUNTS:
            value = figures.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                return f"{where}.{key} is {value!r}; expected a whole number >= 0 or null"
        for key in _WORDS:
            value = figures.get(key)
            if value is not None and not isinstance(value, str):
                return f"{where}.{key} is {value!r}; expected a string or null"
        if not isinstance(figures.get("calls", []), list):
            return f"{where}.calls is {figures['calls']!r}; expected a list"
    return None


# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """A run against a baseline.

    Attributes:
        baseline: the baseline's file stem (``0003_main``).
        rows: one per test in either: ``(nodeid, status, old figures, new figures)``;
            status is ``"compared"``, ``"new"`` or ``"not run"``.
        regressions: ``(nodeid, reason)`` for each rule a test broke.
        rules: the ``--attack-test-compare-fail`` rules applied.
    """

    baseline: str
    rows: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = field(
        default_factory=list
    )
    regressions: list[tuple[str, str]] = field(default_factory=list)
    rules: tuple[CompareFail, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.regressions)


def compare(
    baseline: Mapping[str, Any],
    current: Mapping[str, Mapping[str, Any]],
    rules: Sequence[CompareFail],
    *,
    name: str,
) -> Comparison:
    """Compare the run's figures (node id -> :func:`figures_of`) with ``baseline``."""
    old_tests: Mapping[str, Mapping[str, Any]] = baseline.get("tests", {})
    result = Comparison(baseline=name, rules=tuple(rules))
    for nodeid in sorted(set(old_tests) | set(current)):
        old, new = old_tests.get(nodeid), current.get(nodeid)
        if old is None:
            result.rows.append((nodeid, "new", None, dict(new or {})))
            continue
        if new is None:
            result.rows.append((nodeid, "not run", dict(old), None))
            continue
        result.rows.append((nodeid, "compared", dict(old), dict(new)))
        for rule in rules:
            reason = rule.check(old.get(rule.field), new.get(rule.field))
            if reason is not None:
                result.regressions.append((nodeid, reason))
    if rules and not any(status == "compared" for _, status, _, _ in result.rows):
        result.regressions.append(
            (
                "(run)",
                "no attack test of the baseline ran (--attack-test missing?): nothing compared",
            )
        )
    return result


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, key: str) -> str:
    digits = 2 if key == "time" else 3
    a = None if old is None else old.get(key)
    b = None if new is None else new.get(key)
    if old is None:
        return _number(b, digits)
    if new is None:
        return f"{_number(a, digits)} -> -"
    if a is None or b is None or a == b:
        return _number(b, digits) if a == b else f"{_number(a, digits)} -> {_number(b, digits)}"
    return f"{_number(a, digits)} -> {_number(b, digits)} ({b - a:+.{digits}f})"


def _count(figures: Mapping[str, Any] | None) -> str:
    """Inconclusive samples as a count, ``4/64`` (as the "attack tests" table shows them).

    A baseline file without the counts falls back to the stored share.
    """
    if figures is None:
        return "-"
    n, total = figures.get("n_inconclusive"), figures.get("n_samples")
    if isinstance(n, int) and isinstance(total, int) and total > 0:
        return f"{n}/{total}"
    return _number(figures.get("inconclusive"))


def _inconclusive(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    a, b = _count(old), _count(new)
    if old is None:
        return b
    if new is None:
        return f"{a} -> -"
    return b if a == b else f"{a} -> {b}"


COMPARISON_HEADER = ("test", "status", "verdict", "ASR", "robust acc", "inconclusive", "time")


def comparison_lines(comparison: Comparison) -> list[str]:
    """The comparison table, then one line per regression."""
    rows: list[tuple[str, ...]] = [COMPARISON_HEADER]
    flagged = {nodeid for nodeid, _ in comparison.regressions}
    not_run = 0
    for nodeid, status, old, new in comparison.rows:
        if new is None:
            # Deselected or not collected in this session: not a row of this run.
            not_run += 1
            continue
        verdicts = [
            "-" if d is None or d.get("verdict") is None else str(d["verdict"]) for d in (old, new)
        ]
        verdict = (
            verdicts[1]
            if old is None or verdicts[0] == verdicts[1]
            else f"{verdicts[0]} -> {verdicts[1]}"
        )
        rows.append(
            (
                nodeid,
                "REGRESSED" if nodeid in flagged else status,
                verdict,
                _change(old, new, "asr"),
                _change(old, new, "robust_accuracy"),
                _inconclusive(old, new),
                _change(old, new, "time"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COMPARISON_HEADER))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if not_run:
        lines.append(
            f"{not_run} test(s) of the baseline not run in this session (deselected or not "
            "collected): not compared"
        )
    for nodeid, reason in comparison.regressions:
        lines.append(f"REGRESSION {nodeid}: {reason}")
    return lines

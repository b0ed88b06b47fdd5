"""``pytest --attack-test --attack-bench SPEC``: every zoo defense against every named attack.

For attack developers: how strong is my attack on the obfuscations that broke
published defenses? The answer is a table (defense x attack: ASR, verdict,
time) in the terminal, and as JSON and Markdown on request.

How it runs: one generated pytest item per defense and attack, named
``attack-bench::<defense>[<attack>]``, added in ``pytest_collection_modifyitems``
(first, so that ``-k`` and ``--deselect`` then filter them, and identically in
every xdist worker, so ``-n N`` spreads the cells). The run's own collected
tests are deselected: a benchmark run is not a test run. Each cell runs
:meth:`pytest_attacktest.zoo.Defense.run` with ``--attack-test-samples``
samples (default 64, at most 200) and ``--attack-test-seed``, the same call an
attack developer makes by hand, so the table reproduces with two lines of code.

Pass or fail: a cell *passes when its binarization test ran to a verdict*,
whatever the verdict; the verdicts are in the table. A red test means the
cell crashed (an exception in the attack or the engine); its message is in the
table and the JSON. Attack developers want the table, not a wall of failures
for the weak attacks that are meant to fail.

The results travel as the item's ``user_properties`` (serialised with the
report, so under xdist they reach the controller), where the table is printed
and the files written.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_attacktest.bench_spec import BenchEntry, BenchSpecError, parse_bench_spec
from pytest_attacktest.cli_options import BENCH_FLAG, BENCH_JSON_FLAG, BENCH_MD_FLAG, path_value

__all__ = [
    "BENCH_FLAG",
    "BENCH_JSON_FLAG",
    "BENCH_MD_FLAG",
    "BenchItem",
    "bench_document",
    "bench_markdown",
    "bench_table",
    "configure",
]

#: The virtual node under which the cells are collected.
NODE = "attack-bench"
#: The ``user_properties`` key of a cell's record.
PROPERTY = "attack_bench"
#: Most samples a zoo defense holds out.
MAX_SAMPLES = 200


def configure(config: pytest.Config, *, enabled: bool, samples: int, seed: int) -> None:
    """Check the bench options (usage errors before collection) and register the plugin."""
    spec: str | None = config.getoption("attack_bench")
    outputs = [f for f, d in ((BENCH_JSON_FLAG, "json"), (BENCH_MD_FLAG, "md")) if _path(config, d)]
    if spec is None:
        if outputs:
            raise pytest.UsageError(f"{' and '.join(outputs)} need {BENCH_FLAG} SPEC")
        return
    if not enabled:
        raise pytest.UsageError(f"{BENCH_FLAG} needs --attack-test (attack tests are off)")
    if samples > MAX_SAMPLES:
        raise pytest.UsageError(
            f"{BENCH_FLAG}: the zoo holds out {MAX_SAMPLES} digits; pass "
            f"--attack-test-samples {MAX_SAMPLES} or fewer (got {samples})"
        )
    try:
        entries = parse_bench_spec(spec)
    except BenchSpecError as exc:
        raise pytest.UsageError(f"{BENCH_FLAG} {spec!r}: {exc}") from None
    for flag, dest in ((BENCH_JSON_FLAG, "json"), (BENCH_MD_FLAG, "md")):
        path = _path(config, dest)
        if path is not None and path.is_dir():
            raise pytest.UsageError(f"{flag}: {path} is a directory; give a file name")
    plugin = BenchPlugin(config, entries, samples=samples, seed=seed)
    config.pluginmanager.register(plugin, "attacktest-bench")


def _path(config: pytest.Config, kind: str) -> Path | None:
    """``--attack-bench-json`` or ``-md`` (``kind``), relative to the invocation dir."""
    return path_value(config, f"attack_bench_{kind}")


class BenchCollector(pytest.Collector):
    """The virtual parent of the cells (``attack-bench``); it collects nothing from disk."""

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        return []


class BenchItem(pytest.Item):
    """One cell: a zoo defense against one attack entry."""

    def __init__(
        self, *, defense: str, entry: BenchEntry, samples: int, seed: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.defense = defense
        self.entry = entry
        self.samples = samples
        self.seed = seed

    def runtest(self) -> None:
        record: dict[str, Any] = {
            "defense": self.defense,
            "attack": self.entry.label,
            "kind": self.entry.kind,
        }
        self.user_properties.append((PROPERTY, record))
        from pytest_attacktest import zoo
        from pytest_attacktest.progress import tracker_for

        defense = zoo.get(self.defense)
        progress = tracker_for(self.config, self.nodeid)
        # Trained (first use, up to a minute: said on the terminal) or loaded
        # before the clock starts.
        model = defense.model(announce=None if progress is None else progress.note)
        attack = self.entry.build(defense)
        overrides: dict[str, Any] = {}
        progress = tracker_for(self.config, self.nodeid)  # its clock starts with the cell
        if progress is not None:
            overrides["progress"] = progress
        start = time.perf_counter()
        report = defense.run(attack, samples=self.samples, seed=self.seed, model=model, **overrides)
        record.update(
            attack_name=getattr(attack, "name", None) or report.attack,
            epsilon=defense.epsilon,
            verdict=report.verdict,
            asr=report.asr,
            n_samples=report.n_samples,
            n_inconclusive=report.n_inconclusive,
            clean_accuracy=report.settings.get("clean_accuracy"),
            seconds=time.perf_counter() - start,
        )

    def reportinfo(self) -> tuple[Path, None, str]:
        return self.path, None, f"{NODE}: {self.defense} x {self.entry.label}"


class BenchPlugin:
    """Adds the cells at collection; where reports are logged, merges and writes the table."""

    def __init__(
        self, config: pytest.Config, entries: list[BenchEntry], *, samples: int, seed: int
    ) -> None:
        self.config = config
        self.entries = entries
        self.samples = samples
        self.seed = seed
        self.cells: dict[tuple[str, str], dict[str, Any]] = {}
        self.written: list[Path] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        from pytest_attacktest import zoo

        if items:
            config.hook.pytest_deselected(items=list(items))
        parent = BenchCollector.from_parent(session, name=NODE, nodeid=NODE)
        items[:] = [
            BenchItem.from_parent(
                parent,
                name=f"{defense}[{entry.label}]",
                defense=defense,
                entry=entry,
                samples=self.samples,
                seed=self.seed,
            )
            for defense in zoo.names()
            for entry in self.entries
        ]
        # Counted as collected, as a collector's items are: the terminal's
        # "N selected" is collected minus deselected, and -k deselects cells.
        report = pytest.CollectReport(NODE, "passed", None, result=list(items))
        config.hook.pytest_collectreport(report=report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.nodeid.startswith(f"{NODE}::"):
            return
        found = [v for k, v in report.user_properties if k == PROPERTY and isinstance(v, dict)]
        if not found:
            return
        record = dict(found[0])
        key = (str(record["defense"]), str(record["attack"]))
        if report.failed:
            message = report.longreprtext.strip().splitlines()
            record.setdefault("verdict", "exception")
            record["error"] = message[-1] if message else report.outcome
        if report.when == "call" or report.failed:
            self.cells[key] = record

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput") or not self.cells:
            return
        document = bench_document(self.cells, self.entries, self.samples, self.seed)
        for kind, text in (
            ("json", json.dumps(document, indent=2, allow_nan=False) + "\n"),
            ("md", bench_markdown(document)),
        ):
            path = _path(self.config, kind)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                self.written.append(path)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if hasattr(self.config, "workerinput") or not self.cells:
            return
        document = bench_document(self.cells, self.entries, self.samples, self.seed)
        terminalreporter.write_sep(
            "=", f"attack bench: {len(self.cells)} cells, {self.samples} samples, seed {self.seed}"
        )
        for line in bench_table(document):
            terminalreporter.write_line(line)
        for path in self.written:
            terminalreporter.write_sep("-", f"attack bench written to {path}")


# --------------------------------------------------------------------------- the table


def bench_document(
    cells: dict[tuple[str, str], dict[str, Any]],
    entries: Sequence[BenchEntry],
    samples: int,
    seed: int,
) -> dict[str, Any]:
    """The JSON document: metadata, the attack columns and one record per cell (zoo order)."""
    from pytest_attacktest import __version__, zoo
    from pytest_attacktest.session import plain

    ordered = [cells[(d, e.label)] for d in zoo.names() for e in entries if (d, e.label) in cells]
    metadata = {
        "version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "samples": samples,
        "seed": seed,
        "python": platform.python_version(),
        "pytest": pytest.__version__,
    }
    return plain(  # type: ignore[no-any-return]
        {
            "metadata": metadata,
            "attacks": [e.label for e in entries],
            "defenses": [d for d in zoo.names() if any(c["defense"] == d for c in ordered)],
            "cells": ordered,
        }
    )


def _cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    if "error" in cell:
        return "exception"
    asr = cell.get("asr")
    asr_text = "  -  " if asr is None else f"{asr:.3f}"
    return f"{asr_text} {cell['verdict']} {cell['seconds']:.1f}s"


def _grid(document: dict[str, Any]) -> list[list[str]]:
    cells = {(c["defense"], c["attack"]): c for c in document["cells"]}
    rows = [["defense", *document["attacks"]]]
    for defense in document["defenses"]:
        rows.append([defense, *(_cell_text(cells.get((defense, a))) for a in document["attacks"])])
    return rows


def bench_table(document: dict[str, Any]) -> list[str]:
    """Aligned terminal lines: a row per defense, a column per attack (ASR verdict time)."""
    rows = _grid(document)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    errors = [c for c in document["cells"] if "error" in c]
    lines += [f"exception in {c['defense']} x {c['attack']}: {c['error']}" for c in errors]
    lines.append("cells: ASR over conclusive samples, verdict (passed >= threshold), wall time")
    return lines


def bench_markdown(document: dict[str, Any]) -> str:
    """The table as Markdown, with the run's metadata: ready for a results file."""
    rows = _grid(document)
    meta = document["metadata"]
    out = [
        f"Attack bench: {len(document['cells'])} cells, {meta['samples']} samples, "
        f"seed {meta['seed']} (pytest-attacktest {meta['version']}, {meta['date']}).",
        "Cells: ASR over conclusive samples, verdict, wall time.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
    ]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    own = [c for c in document["cells"] if c.get("kind") in ("adaptive", "weak")]
    if own:
        out += ["", "Each defense's documented attacks:", ""]
        out += [f"- {c['defense']}, {c['kind']}: {c.get('attack_name') or '?'}" for c in own]
    return "\n".join(out) + "\n"

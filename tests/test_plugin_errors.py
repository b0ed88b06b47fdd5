"""Setup errors inside an attack test: one clean line on the terminal, the message in every report.

A test project (tests/attack_project.py: a digits MLP in PyTorch) holds the
mistakes a new user makes: no epsilon anywhere, a feature layer that is not
there, a torchattacks attack object passed as the attack, an epsilon on the
wrong scale, and labels of the wrong shape. Each must fail with ``ERROR:
<message>`` and no traceback through our code, and the summary table, the
JSON and the HTML must carry the message (not "no report"). A bug (an attack
that raises ``RuntimeError``) must keep its traceback. One subprocess run,
checked whole.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from attack_project import make_project, run_pytest

pytest.importorskip("torch")
pytest.importorskip("torchattacks")

TESTS = """
    import pytest

    import attacks


    def test_missing_epsilon(attack_test, model, data):
        attack_test(model, *data, attack=attacks.PGD("linf", steps=5))


    @pytest.mark.attack_test(epsilon=0.1)
    def test_feature_error(attack_test, model, data):
        attack_test(model, *data, attack=attacks.PGD("linf", steps=5), features="nope")


    @pytest.mark.attack_test(epsilon=0.1)
    def test_torchattacks_instance(attack_test, model, data):
        import torchattacks

        attack_test(model, *data, attack=torchattacks.PGD(model, eps=0.1))


    @pytest.mark.attack_test(epsilon=8)
    def test_epsilon_scale(attack_test, model, data):
        attack_test(model, *data, attack=attacks.PGD("linf", steps=5))


    @pytest.mark.attack_test(epsilon=0.1)
    def test_one_hot_labels(attack_test, model, data):
        import torch

        x, y = data
        attack_test(model, x, torch.nn.functional.one_hot(y, 10), attack=attacks.PGD("linf"))


    @pytest.mark.attack_test(epsilon=0.1, n_validation=8, min_conclusive=8)
    def test_attack_bug(attack_test, model, data):
        def broken(model, x, y, epsilon):
            raise RuntimeError("boom in the attack")

        attack_test(model, *data, attack=broken)
"""

#: Test name -> a piece of the message its failure must show.
MESSAGES = {
    "test_missing_epsilon": "epsilon is missing: give it in the marker",
    "test_feature_error": "Sequential has no submodule 'nope'",
    "test_torchattacks_instance": "attacks.FromTorchattacks(torchattacks.PGD",
    "test_epsilon_scale": "epsilon=8 is at least the largest linf distance",
    "test_one_hot_labels": "one-hot or scores",
}


def _sections(lines: list[str]) -> dict[str, list[str]]:
    """The FAILURES section's lines per test, from its ``___ name ___`` header to the next."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        header = re.fullmatch(r"_{3,} (\S+) _{3,}", line)
        if header:
            current = sections.setdefault(header.group(1), [])
        elif re.fullmatch(r"=+ .* =+", line):
            current = None
        elif current is not None:
            current.append(line)
    return sections


def test_setup_errors_are_one_line_and_reach_every_report(tmp_path: Path) -> None:
    project = make_project(tmp_path, TESTS)
    result = run_pytest(
        project,
        "--attack-test",
        "--attack-test-samples",
        "8",
        "--attack-test-json",
        "out.json",
        "--attack-test-html",
        "out.html",
    )
    result.assert_outcomes(failed=len(MESSAGES) + 1)
    sections = _sections(result.stdout.lines)
    for name, message in MESSAGES.items():
        lines = [line for line in sections[name] if line.strip()]
        assert len(lines) == 1, f"{name}: expected one line, got {lines}"
        assert lines[0].startswith("ERROR: "), lines[0]
        assert message in lines[0], lines[0]
    # A bug keeps its traceback: the frame that raised and the exception.
    bug = "\n".join(sections["test_attack_bug"])
    assert "RuntimeError: boom in the attack" in bug
    assert "def broken" in bug
    # Nowhere a traceback through our package for the setup errors.
    setup_text = "\n".join(line for name in MESSAGES for line in sections[name])
    assert "Traceback" not in setup_text
    assert "pytest_attacktest/" not in setup_text

    # The summary table: one row per test, the error's message in place of a verdict.
    rows = {
        line.split()[0].split("::")[1]: line
        for line in result.stdout.lines
        if line.startswith("test_attack.py::")
    }
    for name, message in MESSAGES.items():
        assert "no report" not in rows[name], rows[name]
        assert "  error: " in rows[name], rows[name]
        assert message in rows[name], rows[name]
    assert "no report (failed)" in rows["test_attack_bug"]

    document: dict[str, Any] = json.loads((project / "out.json").read_text())
    entries = {entry["nodeid"].split("::")[1]: entry for entry in document["tests"]}
    for name, message in MESSAGES.items():
        assert entries[name]["outcome"] == "failed"
        assert message in entries[name]["error"], entries[name]
    assert entries["test_attack_bug"]["error"] is None  # a bug is no setup error

    page = html.unescape((project / "out.html").read_text())
    for message in MESSAGES.values():
        # In the summary table and in the test's section.
        assert len(re.findall(r"error: [^<]*" + re.escape(message), page)) == 2, message

"""The plugin running the real binarization engine: ``pytest --attack-test`` end to end.

A small test project (a conftest that trains a digits MLP in PyTorch, and a
test file with a strong attack, a non-attack, a setup that cannot work, a
swallowed error and a fixture that is never called) is run in a subprocess,
with the plugin loaded through its entry point as users get it. Each run
imports torch, so there are only three (serial, ``-n 2``, without the flag),
each checked whole by one test: its output, JSON and JUnit XML. Device
handling and the agreement of the plugin's constants with the engine are
checked in-process.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from attack_project import make_project, run_pytest

from pytest_attacktest.devices import (
    DeviceError,
    DeviceNotAppliedWarning,
    spread_device,
    to_device,
)
from pytest_attacktest.engine import binarization
from pytest_attacktest.engine.options import DEFAULT_THRESHOLD, ENGINE_KEYS
from pytest_attacktest.fixture import ERROR_VERDICT, NEVER_CALLED, AttackTestFixture
from pytest_attacktest.session import AttackTestSession, RunResults

torch = pytest.importorskip("torch")

# The generated project (tests/attack_project.py) trains its own copy of the
# digits MLP; torch is imported inside its fixtures so that the run without
# the flag, where every attack test is skipped, never loads it.
TESTS = """
    import pytest

    # Engine keywords pass through the marker (fewer validation points: faster;
    # verdicts from 8 samples, below the default 10 conclusive, for speed).
    pytestmark = pytest.mark.attack_test(epsilon=0.1, n_validation=8, min_conclusive=8)


    def identity(model, x, y, epsilon):
        return x


    def test_pgd(attack_test, model, data):
        import attacks

        report = attack_test(model, *data, attack=attacks.PGD("linf", steps=20))
        assert report.passed and report.n_samples == 8


    @pytest.mark.attack_test(samples=12)
    def test_identity(attack_test, model, data):
        attack_test(model, *data, attack=identity)


    def test_setup_error(attack_test, model, data):
        # 201 training points for 32 feature dimensions: no readout separates them.
        attack_test(model, *data, attack=identity, n_inner=200, samples=4)


    def test_swallowed_error(attack_test, model, data):
        try:
            attack_test(model, data[0] * 5, data[1], attack=identity)  # outside the bounds
        except ValueError:
            pass


    def test_never_called(attack_test, model):
        pass
"""

NODEIDS = {
    f"test_attack.py::{name}"
    for name in ("test_pgd", "test_identity", "test_setup_error", "test_swallowed_error")
} | {"test_attack.py::test_never_called"}


def _project(path: Path) -> Path:
    return make_project(path, TESTS)


RUN_ARGS = (
    "--attack-test",
    "--attack-test-samples",
    "8",
    "--attack-test-device",
    "cpu",
    "--attack-test-json",
    "out/attack.json",
    "-v",
)


def _json(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((path / "out" / "attack.json").read_text())
    return document


def _entries(path: Path) -> dict[str, dict[str, Any]]:
    tests = _json(path)["tests"]
    entries = {t["nodeid"]: t for t in tests}
    assert len(entries) == len(tests), "a test appears more than once"
    return entries


# Each run is checked by one test (through the helpers below), so that under
# `pytest -n 2` no run is repeated on a second worker for another test's sake.


def _check_verdicts(result: pytest.RunResult) -> None:
    """A strong attack passes; the others fail, each with the reason the user needs."""
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines(
        ["attacktest: enabled, seed=0, samples=8, threshold=0.95, device=cpu"]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_identity _*",
            "binarization test FAILED: attack identity found the guaranteed adversarial "
            "for 0/12 conclusive samples (ASR 0.000, threshold 0.950)*",
        ]
    )
    # A setup that cannot work is not blamed on the attack.
    result.stdout.fnmatch_lines(
        ["*_ test_setup_error _*", ERROR_VERDICT, "binarization test ERROR:*", "*likely causes*"]
    )
    result.stdout.fnmatch_lines(
        ["*_ test_swallowed_error _*", "*caught an exception raised by attack_test*NOT tested"]
    )
    result.stdout.fnmatch_lines(["*_ test_never_called _*", NEVER_CALLED])


def _check_terminal_summary(result: pytest.RunResult, path: Path) -> None:
    """One "attack tests" section, one row per attack test, and where the JSON went."""
    lines = result.stdout.lines
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"=+ attack tests =+", line)]
    assert len(starts) == 1, "the section must be printed exactly once"
    header, *rows = lines[starts[0] + 1 : starts[0] + 7]
    assert header.split() == ["test", "verdict", "ASR", "threshold", "inconclusive", "time"]
    cells = {row.split()[0]: row.split()[1:] for row in rows}
    assert set(cells) == NODEIDS
    assert cells["test_attack.py::test_pgd"][:4] == ["passed", "1.000", "0.950", "0/8"]
    assert re.fullmatch(r"\d+\.\d\ds", cells["test_attack.py::test_pgd"][4])
    assert cells["test_attack.py::test_identity"][:4] == ["failed", "0.000", "0.950", "0/12"]
    assert cells["test_attack.py::test_setup_error"][0] == "error"
    assert cells["test_attack.py::test_setup_error"][3] == "4/4"
    assert cells["test_attack.py::test_never_called"][:3] == ["no", "report", "(failed)"]
    written = [line for line in lines if "attack test report written to" in line]
    assert len(written) == 1
    assert str(path / "out" / "attack.json") in written[0]


def _check_json(path: Path) -> None:
    """Metadata, then every attack test once, with its outcome and binarization report."""
    document = _json(path)
    metadata = document["metadata"]
    assert metadata["seed"] == 0
    assert metadata["samples"] == 8
    assert metadata["device"] == "cpu"
    assert metadata["enabled"] is True
    assert metadata["python"].count(".") == 2
    assert metadata["pytest"] == pytest.__version__
    assert re.match(r"\d{4}-\d\d-\d\dT", metadata["date"])
    assert document["summary"] == {"passed": 1, "failed": 4}

    entries = _entries(path)
    assert set(entries) == NODEIDS
    pgd = entries["test_attack.py::test_pgd"]
    assert (pgd["outcome"], pgd["verdict"]) == ("passed", "passed")
    assert pgd["asr"] >= DEFAULT_THRESHOLD
    (report,) = pgd["reports"]
    # --attack-test-samples 8 limits the samples; the module marker's engine keyword arrives.
    assert report["n_samples"] == pgd["n_samples"] == 8 == len(report["samples"])
    assert report["settings"]["n_validation"] == 8
    assert report["attack"].startswith("PGD")
    assert report["seconds"] > 0

    identity = entries["test_attack.py::test_identity"]
    assert (identity["outcome"], identity["verdict"], identity["asr"]) == ("failed", "failed", 0.0)
    assert identity["n_samples"] == 12  # the marker's samples= wins over the option
    error = entries["test_attack.py::test_setup_error"]
    assert (error["outcome"], error["verdict"], error["n_inconclusive"]) == ("failed", "error", 4)
    assert error["asr"] is None  # no conclusive sample: no ASR (strict JSON: no NaN)
    for name in ("test_swallowed_error", "test_never_called"):
        entry = entries[f"test_attack.py::{name}"]
        assert (entry["outcome"], entry["verdict"], entry["reports"]) == ("failed", None, [])


def _check_junit(path: Path) -> None:
    """The fixture's record_property values reach the JUnit XML."""
    cases = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(path / "junit.xml").iter("testcase")
    }
    assert cases["test_pgd"]["attack_test_verdict"] == "passed"
    assert float(cases["test_pgd"]["attack_test_asr"]) >= DEFAULT_THRESHOLD
    assert cases["test_pgd"]["attack_test_n_inconclusive"] == "0"
    assert float(cases["test_pgd"]["attack_test_seconds"]) > 0
    assert cases["test_identity"]["attack_test_verdict"] == "failed"
    assert cases["test_setup_error"]["attack_test_verdict"] == "error"
    assert cases["test_setup_error"]["attack_test_asr"] == "nan"
    assert cases["test_never_called"] == {}


def test_with_the_flag_verdicts_summary_json_and_junit(tmp_path: Path) -> None:
    path = _project(tmp_path)
    result = run_pytest(path, *RUN_ARGS, "--junitxml", "junit.xml")
    _check_verdicts(result)
    _check_terminal_summary(result, path)
    _check_json(path)
    _check_junit(path)


def test_under_xdist_the_controller_merges_each_test_once(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    path = _project(tmp_path)
    result = run_pytest(path, *RUN_ARGS, "-n", "2", "--junitxml", "junit.xml")
    result.stdout.fnmatch_lines(["2 workers [[]5 items[]]"])
    _check_verdicts(result)
    _check_terminal_summary(result, path)  # printed once, by the controller
    _check_json(path)  # every test exactly once, with its full report
    _check_junit(path)  # user properties travel with the reports


# --------------------------------------------------------------------------- flag off


def test_without_the_flag_all_skip_and_no_summary(tmp_path: Path) -> None:
    path = _project(tmp_path)
    result = run_pytest(path, "-rs", "--attack-test-json", "out/attack.json")
    result.assert_outcomes(skipped=5)
    result.stdout.fnmatch_lines(["SKIPPED [[]*[]] *: attack test: run with --attack-test*"])
    result.stdout.no_fnmatch_line("*= attack tests =*")
    document = _json(path)
    assert document["metadata"]["enabled"] is False
    assert {t["nodeid"]: t["outcome"] for t in document["tests"]} == dict.fromkeys(
        NODEIDS, "skipped"
    )


# --------------------------------------------------------------------------- in-process


def test_plugin_defaults_and_engine_keywords_agree_with_the_engine() -> None:
    """The engine's defaults are defined once (options.py) and its keywords match ENGINE_KEYS."""
    assert DEFAULT_THRESHOLD is binarization.DEFAULT_THRESHOLD
    parameters = inspect.signature(binarization.binarization_test).parameters
    keyword_only = [n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert set(ENGINE_KEYS) == set(keyword_only) - {
        "attack",
        "epsilon",
        "norm",
        "threshold",
        "seed",
        "stacklevel",
        "progress",
    }


def _mlp() -> Any:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def test_to_device_moves_torch_modules_and_tensors() -> None:
    """The meta device exists without a GPU, so a real move is observable on CPU."""
    import attacks

    x, y = torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64)
    module = _mlp()
    model, xm, ym, used = to_device(module, x, y, "meta")
    assert used == "meta"
    assert model is module
    assert all(p.device.type == "meta" for p in module.parameters())
    assert xm.device.type == "meta"
    assert ym.device.type == "meta"

    wrapped = attacks.Model(_mlp())
    out = to_device(wrapped, x.numpy(), None, "meta")
    assert out[0] is wrapped
    assert out[3] == "meta"
    assert all(p.device.type == "meta" for p in wrapped.native.parameters())
    assert out[2] is None
    assert not isinstance(out[1], torch.Tensor)  # NumPy stays NumPy (the engine's adopt moves it)

    def plain(x: Any) -> Any:
        return x

    assert to_device(plain, x, y, "meta") == (plain, x, y, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match=r"torch sees no CUDA device.*--attack-test-device cpu"):
        to_device(_mlp(), torch.zeros(1, 4), None, "cuda")
    fixture = _fixture("cuda:1")
    with pytest.raises(pytest.fail.Exception, match="cuda:1: torch sees no CUDA device"):
        fixture(_mlp(), torch.zeros(1, 4), None, attack=None, epsilon=0.1)


def _fixture(device: str) -> AttackTestFixture:
    session = AttackTestSession(enabled=True, enabled_by="--attack-test", seed=0, device=device)
    return AttackTestFixture(session.base_settings(), session=session, results=RunResults())


def test_device_not_applied_to_other_frameworks_warns_once() -> None:
    import numpy as np

    fixture = _fixture("cpu")
    x = np.zeros((2, 4), dtype=np.float32)
    with pytest.warns(DeviceNotAppliedWarning, match="applied to PyTorch models only"):
        fixture._to_device(lambda v: v, x, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixture._to_device(lambda v: v, x, None)


def test_bare_cuda_spreads_xdist_workers_over_gpus() -> None:
    assert spread_device("cuda", 0, 2) == "cuda:0"
    assert spread_device("cuda", 3, 2) == "cuda:1"
    assert spread_device("cuda", None, 2) == "cuda"  # no xdist
    assert spread_device("cuda:1", 3, 2) == "cuda:1"  # explicit index kept
    assert spread_device("cpu", 3, 2) == "cpu"
    assert spread_device("cuda", 3, 0) == "cuda"

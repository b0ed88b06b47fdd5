"""One GPU per pytest-xdist worker, before any framework starts (simulated GPUs).

No GPU is needed: the mapping only sets ``CUDA_VISIBLE_DEVICES``, and the GPUs
are counted from that variable, from ``nvidia-smi -L`` (faked here), or from
:data:`~pytest_attacktest.devices.SIMULATED_GPUS_ENV`. The end-to-end runs
start ``pytest -n 2`` in a subprocess with the plugin loaded by entry point
and check, from inside each worker, what a conftest and a test see, and what
the terminal summary and the JSON report name.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import run

from pytest_attacktest.devices import (
    SIMULATED_GPUS_ENV,
    VISIBLE_DEVICES_ENV,
    VisibleGpus,
    assign_gpu,
    list_gpus,
    mapping_lines,
    parse_nvidia_smi,
    parse_visible_devices,
    pin_worker,
    started_as_xdist_worker,
)

NVIDIA_SMI = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa-0000)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb-1111)
  MIG 3g.20gb     Device  0: (UUID: MIG-cccc-2222)
  MIG 3g.20gb     Device  1: (UUID: MIG-dddd-3333)
GPU 2: Tesla T4 (UUID: GPU-eeee-4444)
"""


def _no_smi(command: list[str]) -> str:
    raise AssertionError(f"{command} must not run when the GPUs are already known")


def _missing_smi(command: list[str]) -> str:
    raise FileNotFoundError(command[0])


# --------------------------------------------------------------------------- counting GPUs


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3,5", ("3", "5")),
        (" 3 , 5 ", ("3", "5")),
        ("GPU-aaaa,1", ("GPU-aaaa", "1")),
        ("3,-1,5", ("3",)),  # CUDA stops at the first invalid entry
        ("-1", ()),
        ("", ()),
        ("2,,4", ("2",)),
    ],
)
def test_visible_devices_are_read_as_cuda_reads_them(value: str, expected: tuple[str, ...]) -> None:
    assert parse_visible_devices(value) == expected


def test_nvidia_smi_lists_gpus_by_uuid_and_mig_instances_instead_of_their_gpu() -> None:
    ids, names = parse_nvidia_smi(NVIDIA_SMI)
    assert ids == ("GPU-aaaa-0000", "MIG-cccc-2222", "MIG-dddd-3333", "GPU-eeee-4444")
    assert names[0] == "NVIDIA H100 80GB HBM3"
    assert names[1] == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"
    assert parse_nvidia_smi("GPU 0: Old Card\n") == (("0",), ("Old Card",))
    assert parse_nvidia_smi("No devices were found\n") == ((), ())


def test_cuda_visible_devices_wins_over_simulation_and_nvidia_smi() -> None:
    env = {VISIBLE_DEVICES_ENV: "3,5", SIMULATED_GPUS_ENV: "GPU-x"}
    assert list_gpus(env, run=_no_smi) == VisibleGpus(("3", "5"), ("", ""), VISIBLE_DEVICES_ENV)
    hidden = list_gpus({VISIBLE_DEVICES_ENV: ""}, run=_no_smi)
    assert hidden.ids == ()
    assert "hides every GPU" in hidden.note


def test_without_the_variable_gpus_come_from_nvidia_smi_or_the_simulation() -> None:
    found = list_gpus({}, run=lambda command: NVIDIA_SMI)
    assert (found.source, len(found.ids)) == ("nvidia-smi", 4)
    assert list_gpus({SIMULATED_GPUS_ENV: "7,8"}, run=_no_smi).ids == ("7", "8")
    missing = list_gpus({}, run=_missing_smi)
    assert missing.ids == ()
    assert "nvidia-smi not found" in missing.note

    def failing(command: list[str]) -> str:
        raise subprocess.CalledProcessError(9, command)

    assert "failed" in list_gpus({}, run=failing).note


# --------------------------------------------------------------------------- mapping


def test_workers_take_the_visible_gpus_round_robin() -> None:
    gpus = VisibleGpus(("3", "5"), ("", ""), VISIBLE_DEVICES_ENV)
    taken = [assign_gpu(f"gw{i}", 3, gpus) for i in range(3)]
    assert [t.gpu for t in taken] == ["3", "5", "3"]
    assert all(t.device == "cuda" for t in taken)
    assert "3 workers share 2 GPU(s)" in taken[2].note
    assert assign_gpu("gw1", 2, gpus).note == ""


def test_without_gpus_workers_run_on_the_cpu_and_say_why() -> None:
    none = VisibleGpus((), (), "nvidia-smi", "nvidia-smi not found and CUDA_VISIBLE_DEVICES unset")
    taken = assign_gpu("gw1", 2, none)
    assert (taken.gpu, taken.device) == (None, "cpu")
    assert "run on the CPU" in taken.note
    assert "nvidia-smi not found" in taken.note


def test_a_worker_id_that_is_not_xdists_is_an_error() -> None:
    gpus = VisibleGpus(("0",), ("",), "simulated")
    with pytest.raises(ValueError, match="not a pytest-xdist worker id: 'master'"):
        assign_gpu("master", 1, gpus)


def test_pinning_narrows_the_variable_to_the_workers_gpu() -> None:
    env = {VISIBLE_DEVICES_ENV: "3,5"}
    assert pin_worker("gw1", 2, env, run=_no_smi).gpu == "5"
    assert env[VISIBLE_DEVICES_ENV] == "5"
    env = {SIMULATED_GPUS_ENV: ""}
    assert pin_worker("gw0", 2, env, run=_no_smi).gpu is None
    assert VISIBLE_DEVICES_ENV not in env  # no GPU: nothing to pin


def test_a_worker_is_told_from_a_process_that_inherited_its_variables() -> None:
    env = {"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_TESTRUNUID": "new"}
    assert started_as_xdist_worker(env, startup={})  # set after start-up: xdist did it here
    assert started_as_xdist_worker(env, startup={"PYTEST_XDIST_TESTRUNUID": "outer"})
    assert not started_as_xdist_worker(env, startup={"PYTEST_XDIST_TESTRUNUID": "new"})
    assert not started_as_xdist_worker({"PYTEST_XDIST_WORKER": "gw1"}, startup={})
    assert not started_as_xdist_worker({"PYTEST_XDIST_TESTRUNUID": "new"}, startup={})


def test_mapping_lines_name_worker_gpu_and_source_in_worker_order() -> None:
    gpus = VisibleGpus(("3", "5"), ("", "Big GPU"), VISIBLE_DEVICES_ENV)
    workers = {f"gw{i}": assign_gpu(f"gw{i}", 11, gpus).to_dict() for i in (10, 1, 2, 0)}
    workers["gw2"] = assign_gpu("gw2", 11, VisibleGpus((), (), "simulated", "none")).to_dict()
    lines = mapping_lines(workers)
    assert [line.split()[0] for line in lines] == ["gw0", "gw1", "gw2", "gw10"]
    assert lines[0].startswith("gw0 -> GPU 3 (CUDA_VISIBLE_DEVICES)  [11 workers share")
    assert lines[1].startswith("gw1 -> GPU 5 (CUDA_VISIBLE_DEVICES, Big GPU)")
    assert lines[2].startswith("gw2 -> CPU  [no GPU visible (none)")


# --------------------------------------------------------------------------- under pytest -n 2

# Each process writes what it saw, keyed by worker: the conftest at import (the
# moment a framework would start) and every test.
SEEN_CONFTEST = """
    import json
    import os
    from pathlib import Path

    def _record(kind):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        path = Path(__file__).parent / f"seen-{kind}-{worker}-{os.getpid()}.json"
        path.write_text(json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES")))

    _record("conftest")
"""

SEEN_TESTS = """
    import pytest
    from conftest import _record

    @pytest.mark.parametrize("i", range(6))
    def test_sees(i):
        _record(f"test{i}")
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs: plugin by entry point; no GPU list or xdist identity leaks in from here.

    (Under ``pytest -n``, this process is itself a worker; its inner runs must
    not inherit that, except where a test sets it on purpose.)
    """
    for name in (
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
        VISIBLE_DEVICES_ENV,
        SIMULATED_GPUS_ENV,
        "PYTEST_XDIST_WORKER",
        "PYTEST_XDIST_WORKER_COUNT",
        "PYTEST_XDIST_TESTRUNUID",
    ):
        monkeypatch.delenv(name, raising=False)


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    pytester.makeconftest(textwrap.dedent(SEEN_CONFTEST))
    pytester.makepyfile(test_seen=textwrap.dedent(SEEN_TESTS))
    result = run(pytester, "--attack-test-json=r.json", *args)
    document = json.loads((pytester.path / "r.json").read_text())
    return result, document


def _seen(path: Path) -> dict[str, set[str | None]]:
    """Worker -> the CUDA_VISIBLE_DEVICES values its conftest and tests saw."""
    seen: dict[str, set[str | None]] = {}
    for file in path.glob("seen-*.json"):
        _, kind, worker, _ = file.stem.split("-", 3)
        seen.setdefault(f"{kind[:8]}:{worker}", set()).add(json.loads(file.read_text()))
    return seen


def test_each_worker_takes_one_gpu_of_cuda_visible_devices_before_conftests_load(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VISIBLE_DEVICES_ENV, "3,5")
    result, document = _run(pytester, "-n", "2", "--attack-test", "--attack-test-device", "cuda")
    result.assert_outcomes(passed=6)
    workers = document["metadata"]["workers"]
    assert {w: (e["gpu"], e["source"], e["device"]) for w, e in workers.items()} == {
        "gw0": ("3", VISIBLE_DEVICES_ENV, "cuda"),
        "gw1": ("5", VISIBLE_DEVICES_ENV, "cuda"),
    }
    assert workers["gw0"]["visible"] == ["3", "5"]
    seen = _seen(pytester.path)
    # The conftest (where a framework would be imported) already sees only its GPU.
    assert seen["conftest:gw0"] == {"3"}
    assert seen["conftest:gw1"] == {"5"}
    tests = {k: v for k, v in seen.items() if k.startswith("test")}
    assert tests
    for key, values in tests.items():
        assert values == {"3" if key.endswith("gw0") else "5"}, key
    result.stdout.fnmatch_lines(
        [
            "*= attack tests =*",
            "devices (--attack-test-device cuda, one GPU per worker):",
            "  gw0 -> GPU 3 (CUDA_VISIBLE_DEVICES)",
            "  gw1 -> GPU 5 (CUDA_VISIBLE_DEVICES)",
        ]
    )


def test_simulated_gpus_are_spread_when_cuda_visible_devices_is_unset(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIMULATED_GPUS_ENV, "GPU-aaaa,GPU-bbbb,GPU-cccc")
    result, document = _run(pytester, "-n", "2", "--attack-test", "--attack-test-device", "cuda")
    result.assert_outcomes(passed=6)
    workers = document["metadata"]["workers"]
    assert {w: e["gpu"] for w, e in workers.items()} == {"gw0": "GPU-aaaa", "gw1": "GPU-bbbb"}
    assert all(e["source"] == "simulated" for e in workers.values())
    seen = _seen(pytester.path)
    assert seen["conftest:gw0"] == {"GPU-aaaa"}
    assert seen["conftest:gw1"] == {"GPU-bbbb"}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("-n", "2", "--attack-test", "--attack-test-device", "cuda:1"), id="index"),
        pytest.param(("-n", "2", "--attack-test", "--attack-test-device", "cpu"), id="cpu"),
        pytest.param(("-n", "2", "--attack-test-device", "cuda"), id="tests-off"),
        pytest.param(("--attack-test", "--attack-test-device", "cuda"), id="no-xdist"),
    ],
)
def test_nothing_is_pinned_unless_asked_for_under_xdist(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.setenv(VISIBLE_DEVICES_ENV, "3,5")
    result, document = _run(pytester, *args)
    result.assert_outcomes(passed=6)
    assert document["metadata"]["workers"] is None
    assert all(values == {"3,5"} for values in _seen(pytester.path).values())
    assert "one GPU per worker" not in result.stdout.str()


# A real attack test on a tiny torch model: with no GPU it must run on the CPU.
ATTACK_TEST = """
    import pytest

    @pytest.mark.attack_test(epsilon=0.2, n_validation=4, samples=8, min_conclusive=8)
    def test_pgd(attack_test):
        import torch
        import attacks

        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
        ).eval()
        x = torch.rand(8, 16)
        report = attack_test(model, x, attack=attacks.PGD("linf", steps=10))
        assert x.device.type == "cpu"
        assert report.passed
"""


def test_without_gpus_workers_degrade_to_the_cpu_with_a_note(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv(SIMULATED_GPUS_ENV, "")
    pytester.makepyfile(test_attack=textwrap.dedent(ATTACK_TEST))
    result, document = _run(pytester, "-n", "2", "--attack-test", "--attack-test-device", "cuda")
    result.assert_outcomes(passed=7)
    workers = document["metadata"]["workers"]
    assert {w: (e["gpu"], e["device"]) for w, e in workers.items()} == {
        "gw0": (None, "cpu"),
        "gw1": (None, "cpu"),
    }
    assert [t["outcome"] for t in document["tests"]] == ["passed"]
    assert all(v == {None} for v in _seen(pytester.path).values())
    result.stdout.fnmatch_lines(
        [
            "  gw0 -> CPU  [no GPU visible (PYTEST_ATTACKTEST_SIMULATED_GPUS lists no GPU): "
            "attack tests in this worker run on the CPU]",
        ]
    )


def test_a_pytest_subprocess_of_a_worker_is_not_a_worker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test that runs pytest inside a worker: the subprocess inherits xdist's variables."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "the-outer-run")
    monkeypatch.setenv(VISIBLE_DEVICES_ENV, "3,5")
    result, document = _run(pytester, "--attack-test", "--attack-test-device", "cuda")
    result.assert_outcomes(passed=6)
    assert document["metadata"]["workers"] is None
    assert _seen(pytester.path) == {
        "conftest:gw1": {"3,5"},
        **{f"test{i}:gw1": {"3,5"} for i in range(6)},
    }


def test_an_in_process_run_inside_a_worker_gets_its_variable_back(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that merely inherited xdist's variables is not a worker: no pin."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "not-the-one-at-start-up")
    monkeypatch.setenv(VISIBLE_DEVICES_ENV, "3,5")
    pytester.makepyfile(
        test_env="""
        import os

        def test_env():
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
        """
    )
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--attack-test", "--attack-test-device", "cuda"
    )
    result.assert_outcomes(passed=1)
    assert "one GPU per worker" not in result.stdout.str()

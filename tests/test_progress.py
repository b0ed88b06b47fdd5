"""Live progress: the engine's ``progress`` callback and the plugin's progress lines.

The callback is called per phase and chunk with monotone ``done`` counts
ending at the total, and observing does not change a single result. The
lines are throttled per test and carry an ETA once a chunk finished. End to
end, ``--attack-test-progress`` prints lines from inside a test (output
capturing on), nothing is printed when it is off or when the output is not a
terminal, and a bad mode is a usage error.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from attack_project import make_project, run_pytest
from digits_models import held_out, torch_mlp

from pytest_attacktest.progress import Tracker, format_seconds, parse_interval, parse_mode

torch = pytest.importorskip("torch")

PHASES = ["sampling", "features", "fit", "attack", "verification"]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(progress: Any = None) -> Any:
    import attacks
    from pytest_attacktest import binarization_test

    x, y = held_out(20)
    return binarization_test(
        torch_mlp(),
        torch.from_numpy(x),
        torch.from_numpy(y),
        attack=attacks.PGD(steps=5),
        epsilon=0.1,
        chunk_size=8,  # chunks of 8, 8, 4
        progress=progress,
    )


def test_engine_reports_each_phase_per_chunk_and_does_not_change_results() -> None:
    calls: list[tuple[str, int, int]] = []
    observed = _run(lambda phase, done, total: calls.append((phase, done, total)))
    expected = [(phase, done, 20) for done in (0, 8, 16) for phase in PHASES]
    assert calls == [*expected, ("done", 20, 20)]
    done = [c[1] for c in calls]
    assert done == sorted(done)
    assert done[-1] == 20

    plain = _run()
    assert [s.logit_difference for s in observed.samples] == [
        s.logit_difference for s in plain.samples
    ]
    assert [s.success for s in observed.samples] == [s.success for s in plain.samples]
    assert observed.asr == plain.asr
    assert observed.verdict == plain.verdict


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tracker_throttles_and_estimates_the_time_left() -> None:
    clock, lines = _Clock(), []
    tracker = Tracker("t::x", lines.append, interval=2.0, clock=clock)
    tracker("sampling", 0, 100)  # 0 s in: too early to say anything
    assert lines == []
    clock.now += 3
    tracker("attack", 0, 100)
    assert lines == ["[attacktest] t::x: attack, 0/100 samples, 3s, ETA ?"]
    clock.now += 1
    tracker("verification", 25, 100)  # 1 s after the last line: throttled
    assert len(lines) == 1
    clock.now += 2  # 6 s for 25 samples: 18 s for the other 75
    tracker("sampling", 25, 100)
    assert lines[-1] == "[attacktest] t::x: sampling, 25/100 samples, 6s, ETA 18s"
    tracker("done", 100, 100)
    assert lines[-1] == "[attacktest] t::x: done, 100 samples in 6s"


def test_tracker_of_a_short_test_prints_nothing_even_at_the_end() -> None:
    lines: list[str] = []
    tracker = Tracker("t::x", lines.append, interval=2.0, clock=_Clock())
    for phase in PHASES:
        tracker(phase, 0, 10)
    tracker("done", 10, 10)
    assert lines == []


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (41, "41s"), (123, "2m03s"), (3720, "1h02m")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_parsers_reject_bad_values() -> None:
    assert parse_mode(" ON ") == "on"
    assert parse_interval("0") == 0.0
    for bad in ("yes", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="auto, on, off"):
            parse_mode(bad)
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match="seconds >= 0"):
            parse_interval(bad)


TESTS = """
    def test_pgd(attack_test, model, data, pgd):
        x, y = data
        attack_test(model, x, y, attack=pgd, epsilon=0.1, chunk_size=8)
"""


def test_plugin_prints_progress_lines_only_when_on(tmp_path: Any) -> None:
    path = make_project(tmp_path, TESTS)
    common = (
        "--attack-test",
        "--attack-test-samples",
        "16",
        "-o",
        "attack_test_progress_interval=0",
    )
    forced = run_pytest(path, *common, "--attack-test-progress")
    forced.assert_outcomes(passed=1)
    lines = [line for line in forced.outlines if line.startswith("[attacktest]")]
    label = "[attacktest] test_attack.py::test_pgd:"
    assert f"{label} attack, 0/16 samples" in "\n".join(lines)
    assert f"{label} attack, 8/16 samples" in "\n".join(lines)
    assert lines[-1].startswith(f"{label} done, 16 samples in ")

    # Captured output is not a terminal: auto mode stays silent, as does off.
    for extra in ((), ("--attack-test-progress=off",)):
        quiet = run_pytest(path, *common, *extra)
        quiet.assert_outcomes(passed=1)
        assert not [line for line in quiet.outlines if line.startswith("[attacktest]")]


def test_bad_progress_mode_is_a_usage_error(tmp_path: Any) -> None:
    path = make_project(tmp_path, TESTS)
    result = run_pytest(path, "--attack-test", "--attack-test-progress=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid progress mode 'loud'" in "\n".join(result.errlines)

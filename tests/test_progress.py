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
from digits_models import held_out, jax_mlp, torch_mlp

from pytest_attacktest.progress import Tracker, format_seconds, parse_interval, parse_mode

torch = pytest.importorskip("torch")

PHASES = ["sampling", "features", "fit", "attack", "verification"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread, restored after


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


class _Steps:
    """A progress callback that also takes our attacks' steps."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.calls.append((phase, done, total))

    def attack_steps(self, step: int, steps: int, end: int) -> None:
        self.calls.append(("step", step, steps, end))


def test_engine_passes_the_attacks_steps_within_each_chunk() -> None:
    steps = _Steps()
    observed = _run(steps)
    chunks = []
    for done, end in ((0, 8), (8, 16), (16, 20)):
        counted = [("step", k, 5, end) for k in range(6)]  # PGD(steps=5): 0..5 of 5
        chunks += [(p, done, 20) for p in PHASES[:4]] + counted + [("verification", done, 20)]
    assert steps.calls == [*chunks, ("done", 20, 20)]

    plain = _run()
    assert [s.logit_difference for s in observed.samples] == [
        s.logit_difference for s in plain.samples
    ]
    assert observed.verdict == plain.verdict


@pytest.mark.parametrize(
    ("make", "total"),
    [
        (lambda a: a.PGD(steps=4, restarts=3), 12),
        (lambda a: a.APGD(steps=10, restarts=2), 20),
        (lambda a: a.APGD(steps=10, targeted=True, n_target_classes=2, loss="dlr"), 20),
        (lambda a: a.APGD("l1", steps=10), 10),
        (lambda a: a.Square(queries=6, restarts=2), 12),
    ],
    ids=["pgd-restarts", "apgd-restarts", "apgd-targeted", "apgd-l1", "square"],
)
def test_attacks_count_every_step_only_when_someone_listens(make: Any, total: int) -> None:
    import attacks
    from attacks import progress

    x, y = held_out(8)
    model = torch_mlp()
    attack = make(attacks)
    reported: list[tuple[int, int]] = []
    assert progress.counter(total) is None  # nobody listens: nothing is counted
    with progress.reporting(lambda done, n: reported.append((done, n))):
        observed = attack(model, torch.from_numpy(x), torch.from_numpy(y), epsilon=0.1)
    assert progress.counter(total) is None
    assert reported[0] == (0, total)
    done = [d for d, _ in reported]
    assert done == sorted(done)
    assert {n for _, n in reported} == {total}
    if not isinstance(attack, attacks.Square):  # Square stops once every sample is fooled
        assert done[-1] == total
        assert len(reported) == total + 1  # eager: one report per step
    plain = attack(model, torch.from_numpy(x), torch.from_numpy(y), epsilon=0.1)
    assert torch.equal(observed, plain)  # listening changes nothing


def test_a_jitted_jax_loop_reports_per_call_not_per_step() -> None:
    import attacks
    from attacks import progress

    jnp = pytest.importorskip("jax.numpy")
    x_, y_ = held_out(8)
    x, y = jnp.asarray(x_), jnp.asarray(y_)
    attack = attacks.PGD(steps=6, restarts=2, compile=True)
    reported: list[tuple[int, int]] = []
    with progress.reporting(lambda done, n: reported.append((done, n))):
        observed = attack(jax_mlp(), x, y, epsilon=0.1)
    status = attack.last_fast_path
    assert status is not None
    assert status.captured, status.reason
    # First restart: the capture's step, then the other 5 in one lax loop; the
    # second restart replays all 6 at once.
    assert reported == [(0, 12), (1, 12), (6, 12), (12, 12)]
    plain = attack(jax_mlp(), x, y, epsilon=0.1)
    assert bool((observed == plain).all())


def test_reporting_restores_the_previous_sink_when_the_block_raises() -> None:
    from attacks import progress

    outer: list[tuple[int, int]] = []
    with progress.reporting(lambda done, n: outer.append((done, n))):

        def silenced() -> None:
            with progress.reporting(None):
                assert progress.counter(3) is None
                raise RuntimeError

        with pytest.raises(RuntimeError):
            silenced()
        count = progress.counter(3)
        assert count is not None
        count.at(2)
        count.advance(5)  # capped at the total
    assert outer == [(0, 3), (2, 3), (3, 3)]
    assert progress.counter(3) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tracker_shows_every_phase_change_and_throttles_only_repeats() -> None:
    clock, lines = _Clock(), []
    tracker = Tracker("t::x", lines.append, interval=2.0, clock=clock)
    tracker("sampling", 0, 100)  # 0 s in: too early to say anything
    assert lines == []
    clock.now += 3
    tracker("fit", 0, 100)
    assert lines == ["[attacktest] t::x: fit, 0/100 samples, 3s, ETA ?"]
    clock.now += 0.1  # within the interval, but a new phase: shown (issue 15 item 5)
    tracker("attack", 0, 100)
    assert lines[-1] == "[attacktest] t::x: attack, 0/100 samples, 3s, ETA ?"
    tracker("attack", 0, 100)  # the same phase again within the interval: throttled
    assert len(lines) == 2
    clock.now += 1
    tracker("verification", 25, 100)
    assert lines[-1] == "[attacktest] t::x: verification, 25/100 samples, 4s, ETA 12s"
    clock.now += 2  # 6 s for 25 samples: 18 s for the other 75
    tracker("sampling", 25, 100)
    assert lines[-1] == "[attacktest] t::x: sampling, 25/100 samples, 6s, ETA 18s"
    assert len(lines) == 4
    tracker("done", 100, 100)
    assert lines[-1] == "[attacktest] t::x: done, 100 samples in 6s"


def test_tracker_shows_attack_steps_with_an_eta_in_the_only_chunk() -> None:
    clock, lines = _Clock(), []
    tracker = Tracker("t::x", lines.append, interval=2.0, clock=clock)
    tracker("sampling", 0, 64)
    clock.now += 4  # sampling, features and fit took 4 s
    tracker("attack", 0, 64)
    assert lines == ["[attacktest] t::x: attack, 0/64 samples, 4s, ETA ?"]
    tracker.attack_steps(0, 100, 64)  # the attack call starts: all 64 samples at once
    clock.now += 1
    tracker.attack_steps(10, 100, 64)  # within the interval: throttled
    assert len(lines) == 1
    clock.now += 1  # 2 s for 20 of 100 steps: 8 s left
    tracker.attack_steps(20, 100, 64)
    assert lines[-1] == "[attacktest] t::x: attack, 0/64 samples, step 20/100, 6s, ETA 8s"
    clock.now += 8
    tracker.attack_steps(100, 100, 64)
    assert lines[-1] == "[attacktest] t::x: attack, 0/64 samples, step 100/100, 14s, ETA 0s"
    tracker("verification", 0, 64)  # the estimate holds until the chunk is done
    assert lines[-1] == "[attacktest] t::x: verification, 0/64 samples, 14s, ETA 0s"


def test_tracker_extrapolates_later_chunks_from_the_first_attack() -> None:
    clock, lines = _Clock(), []
    tracker = Tracker("t::x", lines.append, interval=0.0, clock=clock)
    tracker("attack", 0, 100)
    tracker.attack_steps(0, 10, 25)  # chunk 0..25 of 100
    clock.now += 5
    tracker.attack_steps(5, 10, 25)
    # 5 s more for this chunk, done at 10 s: the other 75 samples take 30 s.
    assert lines[-1] == "[attacktest] t::x: attack, 0/100 samples, step 5/10, 5s, ETA 35s"
    clock.now += 5
    tracker("verification", 0, 100)
    tracker("sampling", 25, 100)  # the next chunk: from the samples done again
    assert lines[-1] == "[attacktest] t::x: sampling, 25/100 samples, 10s, ETA 30s"
    tracker("attack", 25, 100)
    tracker.attack_steps(0, 10, 50)
    clock.now += 2
    tracker.attack_steps(1, 10, 50)  # a new call restarts the step timing
    # 18 s more for this chunk, done at 30 s: the other 50 samples take 30 s.
    assert lines[-1] == "[attacktest] t::x: attack, 25/100 samples, step 1/10, 12s, ETA 48s"


def test_tracker_holds_done_for_the_claim_phase() -> None:
    from pytest_attacktest.progress import claim_phase

    clock, lines = _Clock(), []
    tracker = Tracker("t::x", lines.append, interval=2.0, clock=clock)
    tracker.hold_done = True
    tracker("sampling", 0, 16)
    clock.now += 3
    tracker("verification", 0, 16)
    tracker("done", 16, 16)  # the engine's end: the claim's attack still runs
    assert not any("done" in line for line in lines)
    with claim_phase(tracker, 16):
        import attacks.progress

        count = attacks.progress.counter(4)
        assert count is not None
        clock.now += 2
        count.advance()
    assert lines == [
        "[attacktest] t::x: verification, 0/16 samples, 3s, ETA ?",
        "[attacktest] t::x: claim, 0/16 samples, 3s, ETA ?",
        "[attacktest] t::x: claim, 0/16 samples, step 1/4, 5s, ETA 6s",
        "[attacktest] t::x: done, 16 samples in 5s",
    ]
    assert attacks.progress.counter(4) is None  # the sink is gone after the block


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


    def test_claim(attack_test, model, data, pgd):
        x, y = data
        attack_test(model, x, y, attack=pgd, epsilon=0.1, n_validation=8, claim=0.25)
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
    forced = run_pytest(path, *common, "--attack-test-progress", "-k", "test_pgd")
    forced.assert_outcomes(passed=1, deselected=1)
    lines = [line for line in forced.outlines if line.startswith("[attacktest]")]
    label = "[attacktest] test_attack.py::test_pgd:"
    phases = [line.split(", ")[0].removeprefix(f"{label} ") for line in lines]
    # Every phase of both chunks, the attack's 10 PGD steps in each, then done.
    chunk = ["sampling", "features", "fit", "attack", *["attack"] * 11, "verification"]
    assert phases == [*chunk, *chunk, "done"]
    text = "\n".join(lines)
    assert f"{label} attack, 0/16 samples, step 0/10, " in text
    assert f"{label} attack, 8/16 samples, step 10/10, " in text
    step = next(line for line in lines if "0/16 samples, step 5/10" in line)
    assert "ETA ?" not in step  # an estimate from the steps, inside the first chunk
    assert lines[-1].startswith(f"{label} done, 16 samples in ")

    # Captured output is not a terminal: auto mode stays silent, as does off.
    for extra in ((), ("--attack-test-progress=off",)):
        quiet = run_pytest(path, *common, *extra, "-k", "test_pgd")
        quiet.assert_outcomes(passed=1, deselected=1)
        assert not [line for line in quiet.outlines if line.startswith("[attacktest]")]


def test_the_claim_gates_attack_shows_before_the_test_is_done(tmp_path: Any) -> None:
    path = make_project(tmp_path, TESTS)
    result = run_pytest(
        path,
        "--attack-test",
        "--attack-test-samples",
        "16",
        "-o",
        "attack_test_progress_interval=0",
        "--attack-test-progress",
        "-k",
        "test_claim",
    )
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)  # either verdict
    label = "[attacktest] test_attack.py::test_claim:"
    lines = [line.removeprefix(f"{label} ") for line in result.outlines if label in line]
    phases = [line.split(", ")[0] for line in lines]
    assert phases.count("done") == 1
    assert phases[-1] == "done"
    claim = phases.index("claim")
    assert phases[:claim][-1] == "verification"  # after the binarization test's attack
    assert lines[claim].startswith("claim, 0/16 samples, ")
    assert set(phases[claim:-1]) == {"claim"}
    assert any(line.startswith("claim, 0/16 samples, step 10/10, ") for line in lines)


def test_zoo_training_is_announced_once(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from pytest_attacktest import zoo

    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
    untrained = dataclasses.replace(zoo.get("plain"), name="toy", train=lambda module: None)
    lines: list[str] = []
    untrained.model(announce=lines.append)
    assert lines[0] == "training zoo model toy (first use, then cached) ..."
    assert lines[1].startswith("trained zoo model toy in ")
    assert len(lines) == 2
    untrained.model(announce=lines.append)  # cached now: nothing to say
    assert len(lines) == 2


def test_a_bench_cell_says_it_trains_its_zoo_model(tmp_path: Any) -> None:
    path = tmp_path / "project"
    path.mkdir()
    (path / "pytest.ini").write_text("[pytest]\n")
    result = run_pytest(
        path,
        "--attack-test",
        "--attack-bench",
        "FGSM()",
        "--attack-test-samples",
        "8",
        "-k",
        "plain",
        "--attack-test-progress",
        env={"PYTEST_ATTACKTEST_ZOO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
    )
    from pytest_attacktest.zoo import DEFENSES

    result.assert_outcomes(passed=1, deselected=len(DEFENSES) - 1)
    label = "[attacktest] attack-bench::plain[FGSM()]:"
    lines = [line for line in result.outlines if line.startswith(label)]
    assert lines[0] == f"{label} training zoo model plain (first use, then cached) ..."
    assert lines[1].startswith(f"{label} trained zoo model plain in ")


def test_bad_progress_mode_is_a_usage_error(tmp_path: Any) -> None:
    path = make_project(tmp_path, TESTS)
    result = run_pytest(path, "--attack-test", "--attack-test-progress=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid progress mode 'loud'" in "\n".join(result.errlines)


def test_xdist_progress_lines_start_on_their_own_line(tmp_path: Any) -> None:
    """Under ``-n 2`` each finished attack test's line is not glued to xdist's dots."""
    pytest.importorskip("torch")
    pytest.importorskip("xdist")

    tests = """
        import pytest

        pytestmark = pytest.mark.attack_test(epsilon=0.1, n_validation=8, threshold=0.5)

        @pytest.mark.parametrize("i", range(3))
        def test_pgd(attack_test, model, data, pgd, i):
            attack_test(model, *data, attack=pgd)
    """
    path = make_project(tmp_path, tests)
    args = ("--attack-test", "--attack-test-samples", "16", "--attack-test-progress", "on")
    result = run_pytest(path, *args, "-n", "2")
    result.assert_outcomes(passed=3)
    lines = [line for line in result.outlines if "[attacktest]" in line]
    assert len(lines) == 3
    assert all(line.startswith("[attacktest] [gw") for line in lines), lines

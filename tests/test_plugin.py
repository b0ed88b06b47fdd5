"""Tests of the pytest plugin (``pytest_attacktest.plugin``) through pytester.

Runs go through ``runpytest_subprocess`` so the plugin is loaded the way users
get it, through the ``pytest11`` entry point, in a fresh process: that also
keeps numpy (imported when a marker names a norm) out of pytester's in-process
module snapshots, which numpy does not survive. Hypothesis' own pytest plugin is
turned off in those runs only because importing it costs seconds here and the
inner test files do not use it.

Every test asserts exact outcomes, so a plugin that silently passed, ran or
skipped the wrong tests fails them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from helpers import MARKED_AND_FIXTURE, run, write

from pytest_attacktest.collection import SKIP_REASON
from pytest_attacktest.engine.options import DEFAULT_SAMPLES, DEFAULT_THRESHOLD
from pytest_attacktest.fixture import ERROR_VERDICT, NEVER_CALLED

FRAMEWORKS = ("torch", "tensorflow", "jax", "eagerpy", "numpy", "attacks")

#: The inner runs find the plugin through its entry point (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("plugin_autoload")


# --------------------------------------------------------------------------- skip / run


def test_without_flag_marked_and_fixture_tests_are_skipped_naming_the_flag(
    pytester: pytest.Pytester,
) -> None:
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester, "-rs", "-v")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*::test_marked SKIPPED*",
            "*::test_uses_fixture SKIPPED*",
            "*::test_plain PASSED*",
        ]
    )
    result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] *: {SKIP_REASON}"] * 2)
    assert "--attack-test" in SKIP_REASON


def test_dash_m_attack_test_selects_fixture_only_tests_too(pytester: pytest.Pytester) -> None:
    """``-m attack_test`` runs the marked tests and those using only the fixture; nothing else.

    The fixture-only test's settings still come from the module's marker (the
    bare marker added at collection changes none of them).
    """
    write(
        pytester,
        """
        import pytest

        @pytest.mark.attack_test(epsilon=0.25)
        def test_marked():
            pass

        def test_fixture_only(attack_test):
            assert attack_test.epsilon is None
            pytest.skip("settings checked")

        class TestGroup:
            def test_fixture_in_class(self, attack_test):
                assert attack_test.epsilon is None
                pytest.skip("settings checked")

        def test_plain():
            pass
        """,
    )
    write(
        pytester,
        """
        import pytest

        pytestmark = pytest.mark.attack_test(epsilon=0.125, samples=9)

        def test_module_marked(attack_test):
            assert (attack_test.epsilon, attack_test.samples) == (0.125, 9)
            pytest.skip("settings checked")
        """,
        name="test_module",
    )
    selected = run(pytester, "--attack-test", "--strict-markers", "-m", "attack_test", "-v")
    selected.assert_outcomes(passed=1, skipped=3, deselected=1)
    selected.stdout.fnmatch_lines(["*::test_fixture_only SKIPPED*"], consecutive=False)
    selected.stdout.no_fnmatch_line("*::test_plain*")
    others = run(pytester, "--attack-test", "-m", "not attack_test", "-v")
    others.assert_outcomes(passed=1, deselected=4)
    others.stdout.fnmatch_lines(["*::test_plain PASSED*"])


def test_readme_lists_every_marker_keyword() -> None:
    """The README's keyword list names every key the marker accepts (it once missed some)."""
    from pathlib import Path

    from pytest_attacktest.engine.options import MARKER_KEYS

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("- Marker and call keywords:")
    listed = readme[start : readme.index("Unknown or invalid", start)]
    missing = [key for key in MARKER_KEYS if f"`{key}`" not in listed]
    assert not missing, f"README keyword list misses {missing}"


def test_fixture_requested_dynamically_is_skipped_without_flag(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        """
        def test_dynamic(request):
            request.getfixturevalue("attack_test")
            raise AssertionError("must not get here without --attack-test")
        """,
    )
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*{SKIP_REASON}"])


def test_with_flag_marked_test_runs_and_fixture_call_fails(pytester: pytest.Pytester) -> None:
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester, "--attack-test", "-v")
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*::test_marked PASSED*",
            "*::test_uses_fixture FAILED*",
            "*::test_plain PASSED*",
        ]
    )
    result.stdout.fnmatch_lines(["ERROR: epsilon is missing: give it in the marker*"])


def test_fixture_error_cannot_be_swallowed_by_except_exception(
    pytester: pytest.Pytester,
) -> None:
    """A test that wraps the call in ``except Exception`` must still not pass."""
    write(
        pytester,
        """
        def test_swallow(attack_test):
            try:
                attack_test(object(), [0.0], [0], attack=object())
            except Exception:
                pass
        """,
    )
    result = run(pytester, "--attack-test")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*attack_test was called 1 time(s) but only 0 call(s) finished: the test caught*"]
    )


def test_fixture_failure_is_a_base_exception(pytester: pytest.Pytester) -> None:
    """``except Exception`` cannot catch the fixture's own failure (pytest.fail)."""
    write(
        pytester,
        """
        import pytest

        def test_fail_is_not_an_exception():
            assert not issubclass(pytest.fail.Exception, Exception)
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_fixture_requested_but_never_called_fails(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        """
        import pytest

        @pytest.mark.attack_test(epsilon=0.1)
        def test_forgot_to_call(attack_test):
            assert attack_test.epsilon == 0.1

        def test_through_a_fixture(checked):
            pass

        @pytest.fixture
        def checked(attack_test):
            return attack_test

        def test_skips_itself(attack_test):
            pytest.skip("decided at run time")
        """,
    )
    runs = [run(pytester, "--attack-test")]
    if importlib.util.find_spec("xdist") is not None:
        runs.append(run(pytester, "--attack-test", "-n", "2"))
    for res in runs:
        res.assert_outcomes(failed=2, skipped=1)
        for name in ("test_forgot_to_call", "test_through_a_fixture"):
            res.stdout.fnmatch_lines([f"*_ {name} _*", NEVER_CALLED])


def test_missing_epsilon_is_a_clear_error(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        """
        def test_no_epsilon(attack_test):
            attack_test(object(), [0.0], [0], attack=object(), norm="l2")
        """,
    )
    result = run(pytester, "--attack-test")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["ERROR: epsilon is missing: give it in the marker*or in the call*epsilon=8/255))"]
    )


def test_ini_enables_attack_tests(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nattack_test = true\n")
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["attacktest: enabled, seed=0, samples=64, threshold=0.95"])


def test_pyproject_ini_options_enable_attack_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nattack_test = true\nattack_test_seed = "11"\n'
    )
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["attacktest: enabled, seed=11, *"])


def test_cli_flag_overrides_ini_false(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nattack_test = false\n")
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester, "--attack-test")
    result.assert_outcomes(passed=2, failed=1)


def test_ini_false_keeps_attack_tests_skipped(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nattack_test = false\n")
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=2)


def test_invalid_ini_bool_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nattack_test = maybe\n")
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*maybe*"])


# --------------------------------------------------------------------------- settings


def test_fixture_exposes_merged_settings_closest_marker_wins(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        f"""
        import math
        import pytest

        pytestmark = pytest.mark.attack_test(epsilon=0.5, threshold=0.9)

        @pytest.mark.attack_test(epsilon=0.25)
        class TestGroup:
            @pytest.mark.attack_test(norm="L2", samples=8)
            def test_settings(self, attack_test):
                assert attack_test.epsilon == 0.25
                assert attack_test.norm == "l2"
                assert attack_test.p == 2.0
                assert attack_test.threshold == 0.9
                assert attack_test.samples == 8
                assert attack_test.seed == 3
                assert attack_test.settings.seed == 3
                pytest.skip("settings checked")

        def test_defaults(attack_test):
            assert attack_test.epsilon == 0.5
            assert attack_test.norm == "linf"
            assert math.isinf(attack_test.p)
            assert attack_test.threshold == 0.9
            assert attack_test.samples == {DEFAULT_SAMPLES}
            pytest.skip("settings checked")
        """,
    )
    # Skipped (not passed) because they never call the fixture; an assertion error fails them.
    result = run(pytester, "--attack-test", "--attack-test-seed", "3")
    result.assert_outcomes(skipped=2)


def test_fixture_without_marker_gets_defaults(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        f"""
        import math
        import pytest

        def test_defaults(attack_test):
            assert attack_test.epsilon is None
            assert attack_test.norm == "linf" and math.isinf(attack_test.p)
            assert attack_test.threshold == {DEFAULT_THRESHOLD}
            assert attack_test.samples == {DEFAULT_SAMPLES}
            assert attack_test.seed == 0
            assert attack_test.settings.engine == {{}}
            pytest.skip("settings checked")
        """,
    )
    result = run(pytester, "--attack-test")
    result.assert_outcomes(skipped=1)


def test_options_and_ini_set_defaults_that_markers_override(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nattack_test_samples = 7\nattack_test_threshold = 0.5\n")
    write(
        pytester,
        """
        import os
        import pytest

        def test_defaults(attack_test):
            assert (attack_test.samples, attack_test.threshold) == tuple(
                float(v) for v in os.environ["EXPECTED"].split(",")
            )
            pytest.skip("settings checked")

        @pytest.mark.attack_test(samples=3, threshold=0.99, n_inner=5, corners=True)
        def test_marker_wins(attack_test):
            assert (attack_test.samples, attack_test.threshold) == (3, 0.99)
            assert attack_test.settings.engine == {"n_inner": 5, "corners": True}
            pytest.skip("settings checked")
        """,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPECTED", "7,0.5")
        result = run(pytester, "--attack-test")
        result.assert_outcomes(skipped=2)
        result.stdout.fnmatch_lines(["attacktest: enabled, seed=0, samples=7, threshold=0.5"])
        mp.setenv("EXPECTED", "9,0.8")
        result = run(
            pytester,
            "--attack-test",
            "--attack-test-samples=9",
            "--attack-test-threshold",
            "0.8",
            "--attack-test-device=cuda:1",
        )
        result.assert_outcomes(skipped=2)
        result.stdout.fnmatch_lines(
            ["attacktest: enabled, seed=0, samples=9, threshold=0.8, device=cuda:1"]
        )


def test_invalid_call_overrides_are_reported_as_such(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        """
        def test_bad_override(attack_test):
            attack_test(object(), [0.0], [0], attack=object(), epsilon=-1.0)

        def test_unknown_override(attack_test):
            attack_test(object(), [0.0], [0], attack=object(), epsilon=0.1, steps=10)

        def test_bad_engine_override(attack_test):
            attack_test(object(), [0.0], [0], attack=object(), epsilon=0.1, verify_passes=0)
        """,
    )
    result = run(pytester, "--attack-test")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["ERROR: epsilon must be a positive finite number*"])
    result.stdout.fnmatch_lines(
        ["ERROR: unknown keyword argument(s) 'steps'; allowed: epsilon, norm,*"]
    )
    result.stdout.fnmatch_lines(["ERROR: verify_passes must be a positive integer*"])


# --------------------------------------------------------------------------- bad markers


BAD_MARKERS = [
    pytest.param(
        "eps=0.1",
        "unknown keyword argument(s) 'eps' (did you mean 'epsilon'?); allowed: epsilon, norm, "
        "threshold, samples, "
        "claim, features, n_inner, *, chunk_size, max_batch, feature_dtype",
        id="unknown-key",
    ),
    pytest.param("0.1", "positional argument(s) (0.1,) are not accepted*", id="positional"),
    pytest.param("epsilon=0", "epsilon must be a positive finite number, got 0", id="eps-zero"),
    pytest.param(
        "epsilon=-0.1", "epsilon must be a positive finite number, got -0.1", id="eps-negative"
    ),
    pytest.param(
        "epsilon=float('inf')", "epsilon must be a positive finite number, got inf", id="eps-inf"
    ),
    pytest.param(
        "epsilon=float('nan')", "epsilon must be a positive finite number, got nan", id="eps-nan"
    ),
    pytest.param(
        "epsilon='8/255'", "epsilon must be a positive finite number, got '8/255'", id="eps-str"
    ),
    pytest.param(
        "epsilon=True", "epsilon must be a positive finite number, got True", id="eps-bool"
    ),
    pytest.param(
        "norm='l7x'",
        "norm must be 'l1', 'l2', 'linf' or a number p >= 1, got 'l7x'*",
        id="norm-garbled",
    ),
    pytest.param(
        "norm='hamming'",
        "norm must be 'l1', 'l2', 'linf' or a number p >= 1, got 'hamming'*",
        id="norm-unknown",
    ),
    pytest.param(
        "norm=0.5", "norm must be 'l1', 'l2', 'linf' or a number p >= 1, got 0.5*", id="norm-p<1"
    ),
    pytest.param("threshold=0", "threshold must be a number in (0, 1], got 0", id="thr-zero"),
    pytest.param("threshold=1.5", "threshold must be a number in (0, 1], got 1.5", id="thr>1"),
    pytest.param("samples=0", "samples must be a positive integer, got 0", id="samples-zero"),
    pytest.param("claim=1.5", "claim must be a robust accuracy in [[]0, 1[]]*", id="claim>1"),
    pytest.param("samples=2.5", "samples must be a positive integer, got 2.5", id="samples-float"),
    pytest.param("n_inner=0", "n_inner must be a positive integer, got 0", id="n_inner-zero"),
    pytest.param("corners='yes'", "corners must be True or False, got 'yes'", id="corners-str"),
    pytest.param("gap=1.0", "gap must be a number in (0, 1), got 1.0", id="gap-one"),
    pytest.param(
        "n_validation=-1", "n_validation must be an integer >= 0, got -1", id="n_validation"
    ),
    pytest.param(
        "features=3", "features must be None, a layer name or a function*", id="features-int"
    ),
    pytest.param(
        "valid_input='x'", "valid_input must be None or a function*", id="valid_input-str"
    ),
]


def _check_bad_marker(
    pytester: pytest.Pytester, marker_args: str, message: str, *flag: str
) -> None:
    write(
        pytester,
        f"""
        import pytest

        @pytest.mark.attack_test({marker_args})
        def test_bad():
            pass

        def test_good():
            pass
        """,
    )
    result = run(pytester, *flag)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_attack.py*",
            f"test_attack.py::test_bad: invalid attack_test marker: {message}",
        ]
    )


@pytest.mark.parametrize(("marker_args", "message"), BAD_MARKERS)
def test_bad_marker_is_a_collection_error_naming_test_and_key(
    pytester: pytest.Pytester, marker_args: str, message: str
) -> None:
    """Checked without the flag too: a typo must surface in the everyday run."""
    _check_bad_marker(pytester, marker_args, message)


@pytest.mark.parametrize(("marker_args", "message"), [BAD_MARKERS[0], BAD_MARKERS[2]])
def test_bad_marker_is_a_collection_error_with_flag(
    pytester: pytest.Pytester, marker_args: str, message: str
) -> None:
    _check_bad_marker(pytester, marker_args, message, "--attack-test")


def test_bad_markers_in_several_tests_and_files_are_all_reported(
    pytester: pytest.Pytester,
) -> None:
    """Every bad test of a module is listed, and every module with one is reported.

    (A class inside a module whose own tests are bad is not collected, so its
    tests are checked once the module is fixed: pytest collects nothing below a
    failed collector.)
    """
    write(
        pytester,
        """
        import pytest

        @pytest.mark.attack_test(epsilon=0)
        def test_one():
            pass

        @pytest.mark.attack_test(nrom="l2")
        def test_two(attack_test):
            pass

        def test_fine():
            pass
        """,
    )
    write(
        pytester,
        """
        import pytest

        class TestThree:
            @pytest.mark.attack_test(samples=-3)
            def test_three(self, attack_test):
                pass
        """,
        name="test_other",
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "test_attack.py::test_one: invalid attack_test marker: epsilon must be*",
            "test_attack.py::test_two: invalid attack_test marker: *'nrom'*",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        ["test_other.py::TestThree::test_three: invalid attack_test marker: samples must be*"]
    )


def test_bad_marker_under_xdist_reaches_the_controller(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    write(
        pytester,
        """
        import pytest

        @pytest.mark.attack_test(epsilon=0)
        def test_bad():
            pass
        """,
    )
    result = run(pytester, "-n", "2")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["test_attack.py::test_bad: invalid attack_test marker: epsilon must be*"]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_marker_added_after_collection_is_validated_at_setup(pytester: pytest.Pytester) -> None:
    """A conftest that adds the marker in its own modifyitems hook is checked too."""
    pytester.makeconftest(
        """
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                item.add_marker(pytest.mark.attack_test(epsilon=-1))
        """
    )
    write(pytester, "def test_late():\n    pass\n")
    for flag in ((), ("--attack-test",)):
        result = run(pytester, *flag)
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(
            ["*test_attack.py::test_late: invalid attack_test marker: epsilon must be*"]
        )


def test_xdist_runs_and_skips_like_a_plain_run(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    write(pytester, MARKED_AND_FIXTURE)
    run(pytester, "-n", "2").assert_outcomes(passed=1, skipped=2)
    run(pytester, "-n", "2", "--attack-test").assert_outcomes(passed=2, failed=1)


# --------------------------------------------------------------------------- isolation


#: What pytest imports when it loads the plugin: the plugin and the modules it delegates to.
PLUGIN_MODULES = (
    "pytest_attacktest.plugin",
    "pytest_attacktest.cli_options",
    "pytest_attacktest.collection",
    "pytest_attacktest.fixture",
    "pytest_attacktest.reporting",
    "pytest_attacktest.session",
    "pytest_attacktest.progress",
    "pytest_attacktest.bench",
)


@pytest.mark.parametrize("module", PLUGIN_MODULES)
def test_plugin_import_loads_no_ml_framework(module: str) -> None:
    code = f"import {module}, sys; print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_pytest_run_without_norm_markers_loads_no_ml_framework(
    pytester: pytest.Pytester,
) -> None:
    """Loaded by entry point in every run, the plugin must not slow unrelated suites down."""
    pytester.makeconftest(
        f"""
        import sys

        def pytest_unconfigure(config):
            loaded = sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)
            print("LOADED=" + ",".join(loaded) + "!")
        """
    )
    write(
        pytester,
        """
        import pytest

        @pytest.mark.attack_test(epsilon=0.1, samples=4)
        def test_marked():
            pass

        def test_plain():
            pass
        """,
    )
    for flag in ((), ("--attack-test",)):
        result = run(pytester, "-s", *flag)
        result.stdout.fnmatch_lines(["LOADED=!"])


def test_norm_marker_loads_no_deep_learning_framework(pytester: pytest.Pytester) -> None:
    """Validating ``norm=`` imports ``attacks.norms`` (so eagerpy and numpy), but no
    torch, TensorFlow or JAX: collection must stay cheap in every environment."""
    pytester.makeconftest(
        """
        import sys

        def pytest_unconfigure(config):
            loaded = sorted(m for m in ("torch", "tensorflow", "jax") if m in sys.modules)
            print("LOADED=" + ",".join(loaded) + "!")
        """
    )
    write(
        pytester,
        """
        import pytest

        @pytest.mark.attack_test(epsilon=0.5, norm="l2")
        def test_marked():
            pass
        """,
    )
    result = run(pytester, "-s")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["LOADED=!"])


def test_disabled_plugin_leaves_marker_unknown(pytester: pytest.Pytester) -> None:
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester, "-p", "no:attacktest", "--strict-markers")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*'attack_test' not found in `markers` configuration option*"])


def test_disabled_plugin_has_no_flag(pytester: pytest.Pytester) -> None:
    result = run(pytester, "-p", "no:attacktest", "--attack-test")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --attack-test*"])


# --------------------------------------------------------------------------- messages


def test_messages_say_nothing_was_tested() -> None:
    assert "never called: nothing was tested" in NEVER_CALLED
    assert "NOT tested" in ERROR_VERDICT
    assert "no verdict on the attack's strength" in ERROR_VERDICT

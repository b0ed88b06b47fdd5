"""``--attack-test-jax-cache DIR``: XLA's persistent cache is set before conftests import JAX.

Runs pytest in a subprocess on a generated project whose conftest imports JAX at
load time (as a user's conftest that builds a JAX model would), so the settings
must be in place before any conftest runs.
"""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.jax

pytest.importorskip("jax")

CONFTEST = """
    import jax  # imported while conftests load, before any test
"""

TEST = """
    import os

    import jax
    import jax.numpy as jnp
    import pytest


    @pytest.mark.attack_test(epsilon=0.1)
    def test_cache_settings(attack_test):
        # The attack test itself is not the point here: this test only reports.
        print("DIR", jax.config.jax_compilation_cache_dir)
        print("MIN", jax.config.jax_persistent_cache_min_compile_time_secs)
        print("ENV", os.environ.get("JAX_COMPILATION_CACHE_DIR"))
        jax.jit(lambda v: jnp.sin(v) * 2 + 1)(jnp.ones(7)).block_until_ready()
        pytest.skip("reported")
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makepyfile(test_cache=textwrap.dedent(TEST))
    return pytester


def test_the_cache_is_set_before_conftests_and_filled(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--attack-test", "--attack-test-jax-cache", "xla", "-s")
    folder = project.path / "xla"
    result.stdout.fnmatch_lines([f"*DIR {folder}", "MIN 0.0", f"ENV {folder}"])
    assert folder.is_dir()
    assert any(folder.rglob("*")), "nothing was written to the cache"


def test_the_ini_path_is_relative_to_the_ini_file(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini("[pytest]\nattack_test_jax_cache = cache/xla\n")
    monkeypatch.chdir(project.mkdir("sub"))  # invoked from elsewhere than the ini's folder
    result = project.runpytest_subprocess("--attack-test", "-s", str(project.path))
    result.stdout.fnmatch_lines([f"*DIR {project.path / 'cache' / 'xla'}"])
    assert not (project.path / "sub" / "cache").exists()


def test_nothing_is_set_without_the_option_or_without_attack_tests(
    project: pytest.Pytester,
) -> None:
    for args in (["--attack-test"], ["--attack-test-jax-cache", "xla"]):
        result = project.runpytest_subprocess(*args, "-s")
        result.stdout.fnmatch_lines(["ENV None"] if "--attack-test" in args else ["*1 skipped*"])
        assert not (project.path / "xla").exists()

"""Tests of :mod:`pytest_attacktest.cli_options`: the options table, registration, resolution.

End-to-end runs go through a subprocess with the plugin loaded by its entry
point (``run`` of ``test_plugin.py``); the table's own rules (every flag
registered from it, the command line over the ini file, where relative paths
point) are checked on it directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import MARKED_AND_FIXTURE, run, write

from pytest_attacktest import cli_options, plugin
from pytest_attacktest.cli_options import OPTIONS, lookup, path_value, value
from pytest_attacktest.engine.options import SEED_MAX

#: The inner runs find the plugin through its entry point (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("plugin_autoload")


def test_help_lists_options_in_attacktest_group(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    assert result.ret == pytest.ExitCode.OK
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("attacktest"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
    group = "\n".join(lines[start:end])
    assert "  --attack-test " in group
    for option in ("seed=SEED", "samples=N", "threshold=T", "device=DEVICE", "json=PATH"):
        assert f"--attack-test-{option}" in group
    result.stdout.fnmatch_lines(
        [
            "  attack_test (bool):*Run attack tests*",
            "  attack_test_seed (string):*",
            "*Seed for attack tests*",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [
            "  attack_test_samples (string):*",
            "  attack_test_threshold (string):*",
            "  attack_test_device (string):*",
            "  attack_test_json (string):*",
        ]
    )
    result.stdout.fnmatch_lines(["*--markers*"])  # sanity: full help, not an error


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.attack_test(epsilon=None, norm='linf', threshold=*, samples=*)*"]
    )


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", str(SEED_MAX + 1)])
def test_bad_seed_on_command_line_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester, f"--attack-test-seed={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*argument --attack-test-seed: invalid seed '{value}'*"])


BAD_OPTIONS = [
    pytest.param("--attack-test-samples=0", "invalid samples '0': expected a positive*", id="s0"),
    pytest.param("--attack-test-samples=all", "invalid samples 'all'*", id="s-word"),
    pytest.param("--attack-test-threshold=0", "invalid threshold '0': expected*(0, 1]*", id="t0"),
    pytest.param("--attack-test-threshold=95", "invalid threshold '95'*", id="t-percent"),
    pytest.param("--attack-test-device=gpu 0", "invalid device 'gpu 0': expected*cuda:1", id="d"),
    pytest.param("--attack-test-json=", "invalid path '': expected a file name*", id="json"),
]


@pytest.mark.parametrize(("arg", "message"), BAD_OPTIONS)
def test_bad_option_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, arg: str, message: str
) -> None:
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester, arg)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    option = arg.split("=")[0]
    result.stderr.fnmatch_lines([f"*argument {option}: {message}"])


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("attack_test_samples = 0", "ini option attack_test_samples: invalid samples '0'*"),
        ("attack_test_threshold = 2", "ini option attack_test_threshold: invalid threshold*"),
        ("attack_test_device = CUDA", "ini option attack_test_device: invalid device 'CUDA'*"),
    ],
)
def test_bad_ini_option_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, ini: str, message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])


def test_json_path_that_is_a_directory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.mkdir("reports")
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester, "--attack-test-json", "reports")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--attack-test-json: *reports is a directory; give a file name*"])


def test_json_from_ini_is_relative_to_the_ini_file_and_cli_wins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from a subfolder: the ini's path is relative to the ini file, the CLI's to the cwd.

    Without torch: the entries of a skipped run, and of a run whose fixture test fails.
    """
    pytester.makeini("[pytest]\nattack_test_json = reports/from-ini.json\n")
    write(pytester, MARKED_AND_FIXTURE)
    monkeypatch.chdir(pytester.mkdir("sub"))
    run(pytester, str(pytester.path)).assert_outcomes(passed=1, skipped=2)
    document = json.loads((pytester.path / "reports" / "from-ini.json").read_text())
    assert document["metadata"]["enabled"] is False
    outcomes = {t["nodeid"]: t["outcome"] for t in document["tests"]}
    assert outcomes == {
        "test_attack.py::test_marked": "skipped",
        "test_attack.py::test_uses_fixture": "skipped",
    }
    result = run(pytester, str(pytester.path), "--attack-test", "--attack-test-json", "cli.json")
    result.assert_outcomes(passed=2, failed=1)
    document = json.loads((pytester.path / "sub" / "cli.json").read_text())
    outcomes = {t["nodeid"]: t["outcome"] for t in document["tests"]}
    assert outcomes == {
        "test_attack.py::test_marked": "passed",
        "test_attack.py::test_uses_fixture": "failed",
    }
    result.stdout.fnmatch_lines(
        ["*= attack tests =*", "test *", "test_attack.py::test_marked *no report (passed)*"]
    )


def test_bad_seed_in_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nattack_test_seed = seven\n")
    write(pytester, MARKED_AND_FIXTURE)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option attack_test_seed: invalid seed 'seven'*"])


def test_cli_seed_overrides_ini_seed(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nattack_test = true\nattack_test_seed = 7\n")
    write(pytester, "def test_ok():\n    pass\n")
    run(pytester).stdout.fnmatch_lines(["attacktest: enabled, seed=7, *"])
    run(pytester, "--attack-test-seed", "9").stdout.fnmatch_lines(
        ["attacktest: enabled, seed=9, *"]
    )


def test_report_header_only_when_enabled(pytester: pytest.Pytester) -> None:
    write(pytester, "def test_ok():\n    pass\n")
    enabled = run(pytester, "--attack-test", "--attack-test-seed=42")
    enabled.stdout.fnmatch_lines(["attacktest: enabled, seed=42, *"])
    disabled = run(pytester)
    disabled.assert_outcomes(passed=1)
    disabled.stdout.no_fnmatch_line("attacktest:*")


# --------------------------------------------------------------------------- the table


class _Recorder:
    """Stands for pytest's parser and option group: records what the plugin registers."""

    def __init__(self) -> None:
        self.flags: dict[str, dict[str, Any]] = {}
        self.inis: dict[str, dict[str, Any]] = {}

    def getgroup(self, name: str, description: str = "") -> _Recorder:
        assert name == "attacktest"
        return self

    def addoption(self, *names: str, **kwargs: Any) -> None:
        (flag,) = names
        assert flag not in self.flags, f"{flag} registered twice"
        self.flags[flag] = kwargs

    def addini(self, name: str, **kwargs: Any) -> None:
        assert name not in self.inis, f"ini {name} registered twice"
        self.inis[name] = kwargs


#: The run's actions, not settings a project keeps in its ini file: no ini twin.
COMMAND_LINE_ONLY = {
    "--attack-test-save",
    "--attack-test-autosave",
    "--attack-test-compare",
    "--attack-test-compare-fail",
    "--attack-bench",
    "--attack-bench-json",
    "--attack-bench-md",
}


def test_every_option_the_plugin_registers_comes_from_the_table_with_help_and_ini() -> None:
    recorder = _Recorder()
    plugin.pytest_addoption(recorder)  # type: ignore[arg-type]
    assert set(recorder.flags) == {o.flag for o in OPTIONS if o.flag is not None}
    assert set(recorder.inis) == {o.ini for o in OPTIONS if o.ini is not None}
    for option in OPTIONS:
        if option.flag is not None:
            registered = recorder.flags[option.flag]
            assert registered["dest"] == option.dest
            assert registered["default"] is None  # so the command line can be told from ini
            assert registered["help"].strip(), f"{option.flag} has no help"
            assert registered.get("type") is option.parse
            assert (option.ini is None) == (option.flag in COMMAND_LINE_ONLY), option.flag
        if option.ini is not None:
            assert recorder.inis[option.ini]["help"].strip(), f"ini {option.ini} has no help"
            if option.flag is not None:  # the flag's help names its ini twin
                assert option.ini in option.help, option.flag


def test_every_option_of_the_table_is_registered_in_this_run(pytestconfig: pytest.Config) -> None:
    for option in OPTIONS:
        if option.flag is not None:
            pytestconfig.getoption(option.dest)  # ValueError if not registered
        if option.ini is not None:
            pytestconfig.getini(option.ini)


def _config(
    cli: dict[str, Any], ini: dict[str, Any], invocation: Path, inipath: Path | None
) -> Any:
    """What :func:`lookup` reads of a pytest config: options, ini values, two folders."""
    return SimpleNamespace(
        getoption=lambda dest: cli.get(dest),
        getini=lambda name: ini.get(name, False if name == "attack_test" else ""),
        invocation_params=SimpleNamespace(dir=invocation),
        inipath=inipath,
    )


def test_the_command_line_wins_over_the_ini_file_which_wins_over_the_default(
    tmp_path: Path,
) -> None:
    both = _config({"attack_test_seed": 9}, {"attack_test_seed": "7"}, tmp_path, None)
    assert lookup(both, "attack_test_seed") == (9, "cli")
    ini = _config({}, {"attack_test_seed": " 7 "}, tmp_path, None)
    assert lookup(ini, "attack_test_seed") == (7, "ini")
    assert lookup(_config({}, {}, tmp_path, None), "attack_test_seed") == (0, None)
    progress = _config({}, {"attack_test_progress": "OFF"}, tmp_path, None)
    assert value(progress, "attack_test_progress") == "off"
    assert value(_config({}, {}, tmp_path, None), "attack_test_progress") == "auto"
    enable = _config({}, {"attack_test": True}, tmp_path, None)
    assert lookup(enable, "attack_test") == (True, "ini")
    assert lookup(_config({"attack_test": True}, {}, tmp_path, None), "attack_test")[1] == "cli"
    bad = _config({}, {"attack_test_progress_interval": "soon"}, tmp_path, None)
    with pytest.raises(pytest.UsageError, match="ini option attack_test_progress_interval: inv"):
        value(bad, "attack_test_progress_interval")


def test_relative_paths_resolve_where_they_were_given(tmp_path: Path) -> None:
    """Command line: the invocation dir; ini file: the ini file's dir (else the invocation dir)."""
    here, ini_dir = tmp_path / "here", tmp_path / "project"
    inipath = ini_dir / "pytest.ini"
    cli = _config({"attack_test_json": "out/a.json"}, {}, here, inipath)
    assert path_value(cli, "attack_test_json") == here / "out" / "a.json"
    ini = _config({}, {"attack_test_json": "reports/r.json"}, here, inipath)
    assert path_value(ini, "attack_test_json") == ini_dir / "reports" / "r.json"
    no_ini_file = _config({}, {"attack_test_storage": "base"}, here, None)
    assert path_value(no_ini_file, "attack_test_storage") == here / "base"
    bench = _config({"attack_bench_md": "t.md"}, {}, here, inipath)
    assert path_value(bench, "attack_bench_md") == here / "t.md"
    absolute = _config({}, {"attack_test_html": str(tmp_path / "r.html")}, here, inipath)
    assert path_value(absolute, "attack_test_html") == tmp_path / "r.html"
    home = _config({"attack_test_jax_cache": "~/xla"}, {}, here, inipath)
    assert path_value(home, "attack_test_jax_cache") == Path(os.path.expanduser("~/xla"))
    assert path_value(_config({}, {}, here, inipath), "attack_test_json") is None
    assert cli_options.resolve_path(ini, "x", from_cli=False) == ini_dir / "x"

"""``pytest --attack-test --attack-bench SPEC``: the defense zoo against named attacks.

In-process: the SPEC grammar (library classes with literal keywords,
``adaptive``/``weak``, import paths to the user's attack function, factory or
instance) and its errors, which never evaluate code. End to end: a bench of
two zoo defenses x two attacks (a library PGD and the project's own attack
function by import path) prints the table and writes JSON and Markdown whose
cells match a direct ``Defense.run`` with the same seed; bad specs are usage
errors before collection.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attack_project import run_pytest

from pytest_attacktest.bench_spec import BenchEntry, BenchSpecError, parse_bench_spec

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

USER_MODULE = """
    import attacks
    import torch


    def fgsm(model, x, y, epsilon):
        '''One signed-gradient step on the binarized model: the user's own attack function.'''
        x = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
        return (x + epsilon * grad.sign()).clamp(0, 1).detach()


    def make_pgd(steps=3):
        return attacks.PGD(steps=steps)


    INSTANCE = attacks.FGSM()
    NOT_AN_ATTACK = 42
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "bench_user_attacks.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bench_user_attacks"


# --------------------------------------------------------------------------- grammar


def test_spec_reads_library_attacks_keywords_and_builtin_entries() -> None:
    import attacks

    entries = parse_bench_spec("PGD, APGD(loss='margin', restarts=2),adaptive,weak")
    assert [e.label for e in entries] == [
        "PGD",
        "APGD(loss='margin', restarts=2)",
        "adaptive",
        "weak",
    ]
    assert [e.kind for e in entries] == ["library", "library", "adaptive", "weak"]
    assert entries[1].kwargs == {"loss": "margin", "restarts": 2}
    apgd = entries[1].build(None)
    assert isinstance(apgd, attacks.APGD)
    assert apgd.restarts == 2
    assert entries[0].build(None) is not entries[0].build(None)  # fresh per defense

    class Defense:
        adaptive, weak = "the adaptive spec", "the weak spec"

    assert entries[2].build(Defense) == "the adaptive spec"
    assert entries[3].build(Defense) == "the weak spec"


def test_spec_resolves_the_users_attacks_by_import_path(user_module: str) -> None:
    import attacks

    fn, factory, configured, instance = parse_bench_spec(
        f"{user_module}:fgsm,{user_module}:make_pgd,{user_module}:make_pgd(steps=7),"
        f"{user_module}:INSTANCE"
    )
    module = __import__(user_module)
    assert fn.kind == "import"
    assert fn.build(None) is module.fgsm  # a function attack is used as it is
    assert isinstance(factory.build(None), attacks.PGD)
    assert configured.build(None).steps == 7
    assert instance.build(None) is module.INSTANCE


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "names no attack"),
        ("PGD,,APGD", "empty entry"),
        ("PGD(steps=3", "unbalanced '('"),
        ("PGD)", "unbalanced ')'"),
        ("Nope", "'Nope' is no attack of the attacks package; known: "),
        ("Model", "'Model' is no attack of the attacks package"),
        ("PGD(3)", "give arguments as keywords"),
        ("PGD(steps=__import__('os').getpid())", "must be a literal"),
        ("PGD(steps=1+1)", "must be a literal"),
        ("PGD(stepz=3)", "cannot build 'PGD(stepz=3)'"),
        ("PGD(steps=0)", "steps and restarts must be >= 1"),
        ("PGD(norm='l2')", "attacks the l2 norm; every zoo defense is specified in linf"),
        ("adaptive(n=2)", "'adaptive' takes no arguments"),
        ("PGD,PGD", "'PGD' is given twice"),
        ("no_such_module_xyz:attack", "cannot import 'no_such_module_xyz'"),
        ("1PGD", "cannot read entry"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(BenchSpecError, match=None) as info:
        parse_bench_spec(spec)
    assert message in str(info.value)


def test_bad_import_targets_say_what_is_wrong(user_module: str) -> None:
    for target, message in [
        (f"{user_module}:missing", "has no attribute 'missing'"),
        (f"{user_module}:NOT_AN_ATTACK", "is a int: expected an attacks.Attack"),
        (f"{user_module}:INSTANCE(steps=2)", "is an attack instance: it takes no arguments"),
        (f"{user_module}:fgsm(steps=2)", "cannot build"),
    ]:
        with pytest.raises(BenchSpecError) as info:
            parse_bench_spec(target)
        assert message in str(info.value), target


def test_entry_is_a_plain_record() -> None:
    assert BenchEntry("weak", "weak", "weak").kwargs == {}


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Weights in a temporary cache shared by the bench run and the direct runs."""
    from pytest_attacktest import zoo

    path = tmp_path_factory.mktemp("bench-zoo-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(zoo.CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def bench_run(
    tmp_path_factory: pytest.TempPathFactory, zoo_cache: Path
) -> tuple[pytest.RunResult, Path]:
    path = tmp_path_factory.mktemp("bench-project")
    (path / "bench_user_attacks.py").write_text(textwrap.dedent(USER_MODULE))
    (path / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    (path / "test_ignored.py").write_text("def test_not_part_of_the_bench():\n    pass\n")
    result = run_pytest(
        path,
        "--attack-test",
        "--attack-bench",
        "PGD(steps=10), bench_user_attacks:fgsm",
        "--attack-test-samples",
        "16",
        "-k",
        "plain or quantized",
        "--attack-bench-json",
        "out/bench.json",
        "--attack-bench-md",
        "out/bench.md",
        env={"PYTEST_ATTACKTEST_ZOO_CACHE": str(zoo_cache), "OMP_NUM_THREADS": "1"},
    )
    return result, path


def test_bench_runs_every_defense_against_every_attack(bench_run: Any) -> None:
    result, path = bench_run
    # 9 zoo defenses x 2 attacks, -k keeps 2 x 2; the project's own test is deselected.
    result.assert_outcomes(passed=4, deselected=15)
    # The cells count as collected, so the header's "selected" is what runs.
    assert "collected 19 items / 15 deselected / 4 selected" in "\n".join(result.outlines)
    document = json.loads((path / "out/bench.json").read_text())
    assert document["attacks"] == ["PGD(steps=10)", "bench_user_attacks:fgsm"]
    assert document["defenses"] == ["plain", "quantized"]
    assert document["metadata"]["samples"] == 16
    cells = {(c["defense"], c["attack"]): c for c in document["cells"]}
    assert len(cells) == 4
    for cell in cells.values():
        assert cell["n_samples"] == 16
        assert cell["seconds"] > 0
    assert cells[("plain", "bench_user_attacks:fgsm")]["attack_name"] == "fgsm"

    # The terminal table: a row per defense, the cells' ASR and verdict.
    out = "\n".join(result.outlines)
    assert "attack bench: 4 cells, 16 samples, seed 0" in out
    header = next(line for line in result.outlines if line.startswith("defense "))
    assert header.split() == ["defense", "PGD(steps=10)", "bench_user_attacks:fgsm"]
    for defense in ("plain", "quantized"):
        row = next(line for line in result.outlines if line.startswith(f"{defense} "))
        for attack in document["attacks"]:
            cell = cells[(defense, attack)]
            assert f"{cell['asr']:.3f} {cell['verdict']}" in row

    markdown = (path / "out/bench.md").read_text()
    assert "| defense | PGD(steps=10) | bench_user_attacks:fgsm |" in markdown
    for defense in ("plain", "quantized"):
        assert f"| {defense} | {cells[(defense, 'PGD(steps=10)')]['asr']:.3f} " in markdown


@pytest.mark.usefixtures("one_torch_thread")
def test_bench_cells_match_a_direct_zoo_run(bench_run: Any, zoo_cache: Path) -> None:
    import attacks
    from pytest_attacktest import zoo

    _, path = bench_run
    cells = {
        (c["defense"], c["attack"]): c
        for c in json.loads((path / "out/bench.json").read_text())["cells"]
    }
    module = _load_user_module(path)
    for defense_name in ("plain", "quantized"):
        defense = zoo.get(defense_name)
        for label, attack in (
            ("PGD(steps=10)", attacks.PGD(steps=10)),
            (
                "bench_user_attacks:fgsm",
                module.fgsm,
            ),
        ):
            report = defense.run(attack, samples=16, seed=0)
            cell = cells[(defense_name, label)]
            assert (cell["verdict"], cell["asr"], cell["n_inconclusive"]) == (
                report.verdict,
                report.asr,
                report.n_inconclusive,
            ), (defense_name, label)
    # What the zoo documents, seen in the table: PGD breaks the plain model and
    # fails on the quantized one (zero gradients).
    assert cells[("plain", "PGD(steps=10)")]["verdict"] == "passed"
    assert cells[("quantized", "PGD(steps=10)")]["verdict"] == "failed"


def _load_user_module(path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_user_copy", path / "bench_user_attacks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--attack-test", "--attack-bench", "PGD(steps=x)"), "must be a literal"),
        (("--attack-bench", "PGD"), "--attack-bench needs --attack-test"),
        (("--attack-test", "--attack-bench-json", "b.json"), "need --attack-bench SPEC"),
        (
            ("--attack-test", "--attack-bench", "PGD", "--attack-test-samples", "500"),
            "the zoo holds out 200 digits",
        ),
    ],
)
def test_bad_bench_options_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = run_pytest(tmp_path, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in "\n".join(result.errlines)

"""The benchmark harness: its records, its per-sample baseline and its memory arithmetic.

The figures in benchmarks/RESULTS.md are only as good as the code that took
them, so that code is tested like the rest: the shared metadata and output
(``benchmarks/common.py``), the per-sample mode with the reference's structure
(``benchmarks/reference_baseline.py``: it must reach the engine's verdicts by
the engine's definitions), the chunk arithmetic of ``benchmarks/scale.py``
(it must agree with the engine's ``auto_chunk_size``) and one tiny end-to-end
run of ``benchmarks/binarization.py``. No timing is asserted.
"""

from __future__ import annotations

import importlib.machinery
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from helpers import identity

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import eagerpy as ep  # noqa: E402
import numpy as np  # noqa: E402

import attacks  # noqa: E402
from benchmarks import binarization as bench  # noqa: E402
from benchmarks import common, frameworks, jax_step, model_speed, models, scale  # noqa: E402
from benchmarks import gpu_numerics as numerics  # noqa: E402
from benchmarks import reference_baseline as baseline  # noqa: E402
from pytest_attacktest import binarization_test  # noqa: E402
from pytest_attacktest.engine import binarization as engine  # noqa: E402
from pytest_attacktest.engine.blocks import ACTIVATION_FACTOR, device_block_size  # noqa: E402
from pytest_attacktest.engine.report import Report, SampleResult  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread, restored after


# --------------------------------------------------------------------------- common


def test_metadata_records_device_versions_date_seed_commit_and_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--seed", "7"])
    args = type("Args", (), {"seed": 7, "device": "cpu"})()
    meta = common.metadata("demo", args, {"size": 3})
    assert meta["seed"] == 7
    assert meta["settings"] == {"size": 3}
    assert meta["command"] == "python benchmarks/x.py --seed 7"
    assert meta["date_utc"][:2] == "20"
    assert meta["device"]["type"] == "cpu"
    assert meta["device"]["torch_threads"] == 1
    assert meta["versions"]["torch"] == torch.__version__
    assert set(meta["git"]) == {"commit", "dirty"}
    assert len(meta["git"]["commit"] or "") in (0, 40)
    lines = common.header_lines(meta)
    assert lines[0].startswith("demo: 20")
    assert "1 torch thread)" in lines[1]


def test_command_names_the_module_when_run_with_dash_m(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.machinery.ModuleSpec("benchmarks.scale", None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    argv = ["/repo/benchmarks/scale.py", "--sizes", "64"]
    assert common.command(argv) == "python -m benchmarks.scale --sizes 64"
    main.__spec__ = None  # run as a file
    assert common.command(argv) == "python /repo/benchmarks/scale.py --sizes 64"


@pytest.mark.parametrize("how", ["module", "file"])
def test_a_script_runs_as_a_module_and_as_a_file(how: str, tmp_path: Path) -> None:
    """``python -m benchmarks.<name>`` from the root; ``python <path>.py`` from anywhere."""
    root = Path(__file__).resolve().parent.parent
    if how == "module":
        command, cwd = [sys.executable, "-m", "benchmarks.jax_step", "--help"], root
    else:
        script = root / "benchmarks" / "jax_step.py"
        command, cwd = [sys.executable, str(script), "--help"], tmp_path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_finish_writes_strict_json_with_metadata_rows_and_extras(tmp_path: Path) -> None:
    args = type("Args", (), {"seed": 0, "device": "cpu"})()
    meta = common.metadata("demo", args, {})
    rows = [{"a": 1.5, "b": math.nan}, {"a": (1, 2), "b": math.inf}]
    path = tmp_path / "out" / "r.json"
    common.finish(meta, rows, path, summary={"ratio": 2.0})
    document = json.loads(path.read_text())  # strict: NaN would not parse back as null
    assert document["rows"] == [{"a": 1.5, "b": None}, {"a": [1, 2], "b": None}]
    assert document["summary"] == {"ratio": 2.0}
    assert document["metadata"]["benchmark"] == "demo"
    assert "load_average_at_end" in document["metadata"]
    assert "started" not in document["metadata"]


def test_markdown_table_lines_up_and_formats_missing_values() -> None:
    columns = [
        common.Column("name", "name", right=False),
        common.Column("seconds", "s", common.fixed(2)),
        common.Column("ratio", "r", common.ratio),
    ]
    table = common.markdown_table(
        [{"name": "x", "s": 1.234, "r": 123.4}, {"name": "longer", "s": None, "r": 2.5}], columns
    )
    assert table.splitlines() == [
        "| name   | seconds |  ratio |",
        "|--------|--------:|-------:|",
        "| x      |    1.23 | 123.4x |",
        "| longer |       - |  2.50x |",
    ]


# --------------------------------------------------------------------------- baseline


def _mlp() -> tuple[Any, Any]:
    """A small random MLP and inputs in [0, 1]: 32-d features, cheap in both modes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5)
    ).eval()
    return model, torch.rand(6, 20, generator=torch.Generator().manual_seed(1))


def test_per_sample_mode_reaches_the_engines_verdicts_on_the_same_samples() -> None:
    model, x = _mlp()
    common_kw: dict[str, Any] = {"epsilon": 0.2, "n_inner": 8, "n_validation": 4}
    strong = attacks.PGD("linf", steps=20)
    # Six samples: below the engine's default minimum of conclusive samples.
    ours = binarization_test(model, x, attack=strong, min_conclusive=6, **common_kw)
    ref = baseline.per_sample_test(model, x, attack=strong, **common_kw)
    assert ours.verdict == ref.verdict == "passed"
    assert ref.n_samples == 6
    assert [s.index for s in ref.samples] == list(range(6))
    assert all(s.conclusive and s.success for s in ref.samples)
    assert all(s.distance <= 0.2 + 1e-6 for s in ref.samples)
    assert set(ref.timings) == set(baseline.PHASES)
    assert len(ref.settings["sklearn_iterations"]) == 6

    # An attack that does nothing: both say failed, with ASR 0, by the same rules.
    lazy = attacks.PGD("linf", steps=1, abs_stepsize=0.0, random_start=False)
    ref = baseline.per_sample_test(model, x, attack=lazy, **common_kw)
    assert (ref.verdict, ref.asr) == ("failed", 0.0)
    assert all(s.logit_difference < 0 for s in ref.samples)
    ours = binarization_test(model, x, attack=identity, min_conclusive=6, **common_kw)
    assert baseline.agreement(ours, ref)["same_verdict"]


def test_per_sample_mode_is_inconclusive_when_no_readout_separates_the_points() -> None:
    model, x = _mlp()
    with torch.no_grad():
        model[0].weight.zero_()  # features no longer depend on the input: nothing to separate
    ref = baseline.per_sample_test(
        model, x[:3], attack=attacks.PGD("linf", steps=2), epsilon=0.2, n_inner=8
    )
    assert ref.n_inconclusive == 3
    assert ref.verdict == "error"
    assert all("separate" in s.reason for s in ref.samples)
    assert ref.timings["attack"] == 0.0  # as the reference: no attack without a setup
    ours = binarization_test(model, x[:3], attack=identity, epsilon=0.2, n_inner=8)
    assert ours.verdict == "error"


def test_per_sample_min_norm_readout_is_the_engines_formula() -> None:
    from pytest_attacktest.engine.readout import fit_readouts

    rng = np.random.default_rng(0)
    features = rng.normal(size=(9, 16))
    labels = np.array([0] * 8 + [1])
    w, b, _ = baseline.fit_min_norm(features, labels)
    engine_fit = fit_readouts(ep.astensor(torch.from_numpy(features)[None]), labels, 0.0)
    np.testing.assert_allclose(w, engine_fit.weight.raw[0].numpy(), rtol=1e-6, atol=1e-9)
    assert b == pytest.approx(float(engine_fit.bias.raw[0]), rel=1e-6)
    assert np.all(np.where(labels == 1, 1, -1) * (features @ w + b) > 0)
    model, x = _mlp()
    with pytest.raises(ValueError, match="readout must be one of"):
        baseline.per_sample_test(
            model, x, attack=attacks.PGD(steps=1), epsilon=0.1, n_inner=2, readout="svm"
        )


def test_agreement_and_subset_match_samples_by_index() -> None:
    def report(flags: list[tuple[bool, bool]]) -> Report:
        samples = [SampleResult(index=i, conclusive=c, success=s) for i, (c, s) in enumerate(flags)]
        return Report("a", "linf", 0.1, 0.95, 0.5, 0, {}, samples=list(reversed(samples)))

    ours = report([(True, True), (True, False), (False, False), (True, True)])
    theirs = report([(True, True), (True, True), (True, False)])
    first = baseline.subset(ours, 3)
    assert [s.index for s in first.samples] == [0, 1, 2]
    agree = baseline.agreement(first, theirs)
    assert agree["samples"] == 3
    assert agree["conclusive_same"] == 2
    assert agree["conclusive_both"] == 2
    assert (agree["success_same"], agree["success_only_reference"]) == (1, 1)
    assert agree["success_only_ours"] == 0
    assert (agree["verdict_ours"], agree["verdict_reference"]) == ("failed", "failed")


def _trained_mlp() -> tuple[Any, Any]:
    """The benchmarks' trained digits MLP (256-d features) and 8 of its digits."""
    net, x, _ = models.digits_mlp()
    return net, torch.from_numpy(x[-8:])


def test_per_sample_noise_rule_sets_up_under_gpu_like_numerics() -> None:
    """Forward passes that change with the batch (GPU-like, r = 1e-3): the noise rule sets up.

    Without it the closeness shift leaves 0.1% of the boundary logit, which the
    noise flips: samples are inconclusive, as every one was on a GPU.
    """
    from gpu_numerics import torch_gpu_like

    net, x = _trained_mlp()
    kw: dict[str, Any] = {"epsilon": 0.1, "n_inner": 127, "n_validation": 4}
    attack = attacks.PGD("linf", steps=5)
    with torch_gpu_like(net, 1e-3):
        ruled = baseline.per_sample_test(net, x, attack=attack, **kw)
        bare = baseline.per_sample_test(net, x, attack=attack, noise_rule=False, **kw)
    assert ruled.n_inconclusive == 0
    assert all(0 < s.noise < 0.1 for s in ruled.samples)
    assert all(0.4 <= s.closeness < engine.DEFAULT_CLOSENESS for s in ruled.samples)
    assert bare.n_inconclusive >= 2
    assert all(math.isnan(s.noise) for s in bare.samples)
    assert {s.reason for s in bare.samples if not s.conclusive} == {
        "the guaranteed adversarial is not adversarial in the final model"
    }
    # Exact arithmetic: the noise is zero and the closeness is the configured one.
    exact = baseline.per_sample_test(net, x[:2], attack=attack, **kw)
    assert [s.noise for s in exact.samples] == [0.0, 0.0]
    assert [s.closeness for s in exact.samples] == pytest.approx([0.999, 0.999])


def test_case_study_setting_is_the_references_and_sets_up_on_the_trained_mlp() -> None:
    net, x = _trained_mlp()
    ref = baseline.per_sample_test(
        net, x[:4], attack=attacks.PGD("linf", steps=5), epsilon=0.1, **baseline.CASE_STUDY
    )
    settings = ref.settings
    assert (settings["n_inner"], settings["n_boundary"], settings["corners"]) == (49, 10, True)
    assert (settings["closeness"], settings["readout"]) == (0.9999, "sklearn")
    assert ref.n_inconclusive == 0
    assert all(s.closeness == pytest.approx(0.9999) for s in ref.samples)
    assert 0.0 <= ref.random_success_rate <= 1.0


def test_outcome_flags_a_mostly_inconclusive_run_as_not_a_result() -> None:
    def report(conclusive: int, total: int) -> Report:
        samples = [
            SampleResult(
                index=i,
                conclusive=i < conclusive,
                success=True,
                reason="" if i < conclusive else "the readout could not separate",
            )
            for i in range(total)
        ]
        return Report("a", "linf", 0.1, 0.95, 0.1, 0, {}, samples=samples)

    bad = bench.outcome(report(1, 10))
    assert bad["not_a_result"] is True
    assert bad["conclusive_share"] == pytest.approx(0.1)
    assert bad["inconclusive_reasons"] == {"the readout could not separate": 9}
    assert "NOT A RESULT" in bench.outcome_line("ours", bad)
    good = bench.outcome(report(10, 10))
    assert good["not_a_result"] is False
    assert "NOT A RESULT" not in bench.outcome_line("ours", good)


def test_trained_resnet_is_seeded_cached_and_leaves_the_global_rng(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "HELD_OUT", 4)
    monkeypatch.setitem(models.TRAIN_BATCH, "resnet18", 2)
    state = torch.get_rng_state()
    model, record = models.trained_resnet("resnet18", seed=3, steps=1, cache=tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    assert record["cached"] is False
    assert record["steps"] == 1
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert not model.training
    again, cached = models.trained_resnet("resnet18", seed=3, steps=1, cache=tmp_path)
    assert cached["cached"] is True
    assert cached["test_accuracy"] == record["test_accuracy"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18-32px-seed3-steps1-cpu.pt"]
    with pytest.raises(ValueError, match="no training for 'mlp'"):
        models.trained_resnet("mlp")


def test_digits_images_are_the_test_convnets_upscaling() -> None:
    from convnets import images

    x, y = models.digits_images(32)
    ours, labels = images()
    assert x.shape == (1797, 3, 32, 32)
    np.testing.assert_allclose(x.numpy(), ours, atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels)


# --------------------------------------------------------------------------- scale


@pytest.mark.parametrize(
    ("shape", "dim", "samples"),
    [((3, 224, 224), 2048, 4096), ((3, 32, 32), 512, 4096), ((64,), 256, 100)],
)
def test_chunk_arithmetic_is_the_engines(shape: tuple[int, ...], dim: int, samples: int) -> None:
    # The engine's CPU budget through the plan's "half of the free memory".
    plan = scale.chunk_plan(shape, dim, samples, 2 * engine.CPU_CHUNK_BYTES)
    x = ep.astensor(torch.empty((samples, *shape), device="meta"))
    assert plan["chunk_size"] == engine.auto_chunk_size(x, plan["points_per_sample"])
    n_inner = engine.default_inner_points(dim, 1)
    assert plan["points_per_sample"] == 1 + n_inner + 1 + 64


def test_4096_samples_at_224x224_take_many_bounded_chunks_on_80gb() -> None:
    plan = scale.chunk_plan((3, 224, 224), 2048, 4096, 79 * 2**30)
    assert plan["n_inner"] == 999
    assert 1 < plan["chunk_size"] < 64
    assert plan["chunk_points_gib"] <= plan["budget_gib"] <= 39.5
    # A block of forward passes is sized from the memory the chunk's points leave
    # free (half of it, activations counted): hundreds of images, not 4096.
    left = 79 * 2**30 - plan["chunk_points_gib"] * 2**30
    image = 3 * 224 * 224 * 4
    assert plan["forward_block"] == device_block_size((3, 224, 224), 4, int(left))
    assert 111 < plan["forward_block"] < 4096
    assert plan["forward_block"] * image * (1 + ACTIVATION_FACTOR) <= left / 2


def test_linearity_of_an_exact_line_and_of_a_bent_one() -> None:
    rows = [{"samples": n, "total_s": 0.5 + 0.01 * n} for n in (64, 128, 256, 512)]
    fit = scale.linearity(rows)
    assert fit["ms_per_sample"] == pytest.approx(10.0)
    assert fit["intercept_s"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["max_relative_residual"] == pytest.approx(0.0, abs=1e-12)
    bent = [{"samples": n, "total_s": 1e-5 * n * n} for n in (64, 128, 256, 512)]
    assert scale.linearity(bent)["max_relative_residual"] > 0.2


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_on_the_cpu_sees_a_temporary_allocation() -> None:
    """In a fresh process: in this one, what earlier tests left mapped can absorb the block."""
    code = (
        "import torch\n"
        "from benchmarks import scale\n"
        "with scale.PeakMemory('cpu') as memory:\n"
        "    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched\n"
        "    del block\n"
        "print(memory.growth_mib)\n"
    )
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300
    )
    assert run.returncode == 0, run.stderr
    growth = run.stdout.strip().splitlines()[-1]
    assert growth != "None", "no peak memory reading on this machine"
    assert float(growth) >= 60


# --------------------------------------------------------------------------- end to end


def test_binarization_benchmark_runs_both_modes_and_records_them(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    argv = ["--samples", "6", "--baseline-samples", "3", "--steps", "2", "--n-validation", "2"]
    extra = ["--device", "cpu", "--no-warmup", "--what-if-position-routing", "--json", str(path)]
    assert bench.main([*argv, *extra]) == 0
    document = json.loads(path.read_text())
    summary = document["summary"]
    assert summary["samples"] == 6
    assert summary["baseline_samples"] == 3
    assert summary["baseline_scaled"] is True
    assert summary["agreement"]["samples"] == 3
    assert summary["n_inner"] == 127  # the engine's default for the MLP's 256 features
    phases = [row["phase"] for row in document["rows"]]
    assert phases == [*baseline.PHASES, "total"]
    total = document["rows"][-1]
    assert total["reference_scaled_s"] == pytest.approx(2 * total["reference_s"])
    assert summary["speedup"] == pytest.approx(total["reference_scaled_s"] / total["ours_s"])
    # PGD keeps the batch order inside each ball: routing by position changes nothing.
    what_if = summary["what_if_position_routing"]
    assert (what_if["verdict"], what_if["asr"]) == (
        summary["ours"]["verdict"],
        summary["ours"]["asr"],
    )
    assert document["metadata"]["seed"] == 0
    assert document["metadata"]["settings"]["model"] == "mlp"
    for mode in ("ours", "reference"):
        assert summary[mode]["conclusive_share"] == 1.0
        assert summary[mode]["not_a_result"] is False
        assert 0.0 <= summary[mode]["random_success_rate"] <= 1.0
    assert summary["ours"]["forward_noise_max"] == 0.0  # exact CPU arithmetic
    assert summary["not_a_result"] is False
    assert summary["baseline_setting"] == "engine"
    assert all(row["ours_conclusive"] == 1.0 for row in document["rows"])


def test_binarization_benchmark_compares_with_the_case_study_setting(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    argv = ["--samples", "3", "--baseline-samples", "2", "--steps", "2", "--n-validation", "2"]
    extra = ["--device", "cpu", "--no-warmup", "--baseline-setting", "reference"]
    assert bench.main([*argv, *extra, "--json", str(path)]) == 0
    summary = json.loads(path.read_text())["summary"]
    assert summary["reference"]["settings"] == {
        "n_inner": 49,
        "n_boundary": 10,
        "corners": True,
        "closeness": 0.9999,
        "noise_rule": False,
        "balanced": False,
        "rescale_logits": "adaptive",
        "readout": "sklearn",
    }
    assert summary["baseline_readout"] == "sklearn"
    assert summary["reference"]["conclusive_share"] == 1.0
    assert summary["reference"]["forward_noise_median"] is None  # not measured there


def test_gpu_numerics_script_reports_targets_and_restores_torch_flags(tmp_path: Path) -> None:
    flags = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    path = tmp_path / "n.json"
    argv = ["--device", "cpu", "--model", "mlp", "--samples", "4", "--reference-samples", "1"]
    argv += ["--steps", "3", "--n-inner", "16", "--float-logits", "--json", str(path)]
    code = numerics.main(argv)
    assert (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    ) == flags
    document = json.loads(path.read_text())
    rows = document["rows"]
    assert [(r["model"], r["config"]) for r in rows] == [("mlp", "tf32"), ("mlp", "bf16")]
    for row in rows:
        assert 0.0 <= row["conclusive_share"] <= 1.0
        assert row["reference_samples"] == 1
        assert row["reference_ms_per_sample"] > 0
        assert set(row["checks"]) == {
            "conclusive_share",
            "random_success",
            "pgd_passes",
            "fgsm_below_pgd",
        }
        assert row["ok"] == all(row["checks"].values())
        assert row["ok"] == (
            row["conclusive_share"] >= 0.95
            and row["random_success_rate"] <= 0.05
            and row["pgd_verdict"] == "passed"
            and row["fgsm_asr"] < row["pgd_asr"]
        )
    assert document["summary"]["all_met"] == all(r["ok"] for r in rows)
    assert code == (0 if document["summary"]["all_met"] else 1)
    # On 4 digits of the MLP, FGSM is as successful as PGD: a missed target, exit code 1.
    assert rows[0]["fgsm_asr"] == rows[0]["pgd_asr"]
    assert rows[0]["checks"]["fgsm_below_pgd"] is False
    assert code == 1


# --------------------------------------------------------------------------- JAX step


def test_jax_step_benchmark_runs_both_loops_on_the_same_attack() -> None:
    """The child measurement: the jit loop really is jax.jit and finds what the eager one does."""
    pytest.importorskip("jax")
    eager = jax_step.child(batch=16, steps=3, compile_=False, seed=0, hidden=16)
    jit = jax_step.child(batch=16, steps=3, compile_=True, seed=0, hidden=16)
    assert eager["fast_path"] == "eager"
    assert jit["fast_path"] == "jax.jit"
    assert jit["robust_accuracy"] == eager["robust_accuracy"]
    assert eager["robust_accuracy"] < 1.0  # three steps at eps 0.1 fool some of the batch
    for result in (eager, jit):
        assert result["call1_cpu_s"] > 0
        assert result["call2_cpu_s"] > 0


def test_gpu_numerics_script_emulates_gpu_noise_on_the_cpu(tmp_path: Path) -> None:
    argv = ["--device", "cpu", "--model", "mlp", "--samples", "4", "--reference-samples", "0"]
    argv += ["--steps", "3", "--n-inner", "16", "--configs", "tf32"]
    rows = []
    for noise in ([], ["--emulate-noise", "1e-3"]):
        path = tmp_path / f"n{len(noise)}.json"
        numerics.main([*argv, *noise, "--json", str(path)])
        rows.append(json.loads(path.read_text())["rows"][0])
    exact, emulated = rows
    assert exact["forward_noise_max"] == 0.0
    assert emulated["forward_noise_median"] > 0.0
    assert emulated["closeness_applied_min"] < exact["closeness_applied_min"]
    assert emulated["reference_ms_per_sample"] is None


# --------------------------------------------------------------------------- issue 16 speed


def test_model_throughput_finds_the_best_batch_and_the_features_ratio() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    x = torch.rand(8, 64)
    measured = model_speed.model_throughput(net, x, batches=(4, 16), laps=1, min_lap_inputs=64)
    rates = [r["images_per_s"] for r in measured["rows"]]
    assert [r["batch"] for r in measured["rows"]] == [4, 16]
    assert all(rate > 0 for rate in rates)
    assert measured["best_images_per_s"] == max(rates)
    report = Report(
        attack="a",
        norm="linf",
        epsilon=0.1,
        threshold=0.95,
        max_inconclusive=0.1,
        seed=0,
        settings={},
    )
    report.settings.update(feature_inputs=int(max(rates)), forward_block=7)
    report.timings["features"] = 2.0
    ratio = model_speed.feature_ratio(report, measured)
    assert ratio["ratio"] == pytest.approx(0.5, rel=1e-3)
    assert ratio["met"] is False
    assert "NOT met" in model_speed.ratio_line("ours", ratio)


def test_framework_decision_says_whether_compile_wins_at_every_batch() -> None:

    def rows(eager: float, fast: float, batch: int) -> list[dict[str, Any]]:
        times = {
            "hand-written loop (jit step)": 1.0,
            "hand-written fori_loop (floor)": 0.5,
            "ours eager (compile=False)": eager,
            "ours fast path (compile=True)": fast,
        }
        return [{"batch": batch, "method": m, "best_s": t} for m, t in times.items()]

    wins = frameworks.decision(rows(1.2, 0.6, 64) + rows(1.1, 0.55, 512))
    assert wins["compile_true_faster_at_every_batch"] is True
    assert wins["batches"][64]["fast path / hand-written fori_loop"] == pytest.approx(1.2)
    loses = frameworks.decision(rows(1.2, 0.6, 64) + rows(1.1, 1.5, 512))
    assert loses["compile_true_faster_at_every_batch"] is False

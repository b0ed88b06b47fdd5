"""Issue 13, engine side: hostile models, attacks and inputs never give a silent pass.

Each test is named after a case of the issue. False-pass cases assert that
the verdict is not ``passed``; the others assert a clear error or the right
behaviour. All on the digits MLP trained in the tests, CPU only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from digits_models import held_out, torch_mlp

import attacks
from pytest_attacktest import binarization_test
from pytest_attacktest.engine.features import FeatureError, feature_extractor

torch = pytest.importorskip("torch")

EPS = 0.1


def _data(n: int = 32) -> tuple[Any, Any]:
    x, y = held_out(n)
    return torch.from_numpy(x), torch.from_numpy(y)


def _split_mlp() -> tuple[Any, Any]:
    """The digits MLP as (body: Linear + ReLU, head: Linear)."""
    mlp = torch_mlp()
    return torch.nn.Sequential(mlp[0], mlp[1]), mlp[2]


# ---------------------------------------------------------------------- 1. feature layer


class HeadDeclaredFirst(torch.nn.Module):
    """``head(round(4 * body(x)) / 4)`` with ``head`` registered before ``body``."""

    def __init__(self) -> None:
        super().__init__()
        body, head = _split_mlp()
        self.head = head
        self.body = body

    def forward(self, x: Any) -> Any:
        return self.head(torch.round(4 * self.body(x)) / 4)


def test_feature_layer_by_registration_order_is_not_a_false_pass() -> None:
    """The quantization between body and head stays in the binarized model: PGD fails."""
    x, y = _data()
    model = HeadDeclaredFirst().eval()
    extract = feature_extractor(model, None, probe=x[:4])
    with torch.no_grad():
        hidden = torch.round(4 * model.body(x[:4])) / 4
        assert torch.equal(extract(x[:4]), hidden)  # the head's input, not the body's
    report = binarization_test(model, x, y, attack=attacks.PGD("linf", steps=20), epsilon=0.2)
    assert report.verdict != "passed", report.summary()


def test_unused_linear_registered_last_is_ignored() -> None:
    body, head = _split_mlp()

    class WithUnused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = body, head
            self.unused = torch.nn.Linear(10, 3)

        def forward(self, x: Any) -> Any:
            return self.head(self.body(x))

    x, y = _data(20)
    report = binarization_test(
        WithUnused().eval(), x, y, attack=attacks.PGD("linf", steps=30), epsilon=EPS
    )
    assert report.passed, report.summary()


def test_feature_layer_temperature_after_the_final_linear_is_found() -> None:
    body, head = _split_mlp()

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = body, head

        def forward(self, x: Any) -> Any:
            return 10 * self.head(self.body(x))

    x, _ = _data(4)
    with torch.no_grad():
        assert torch.equal(feature_extractor(Scaled(), None, probe=x)(x), body(x))


def test_feature_layer_ambiguous_or_missing_is_refused_naming_the_layers() -> None:
    body, head = _split_mlp()

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head, self.other = body, head, torch.nn.Linear(32, 10)

        def forward(self, x: Any) -> Any:
            h = self.body(x)
            return self.head(h) + self.other(h)

    class NotFromALinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.probe = torch.nn.Linear(64, 10)

        def forward(self, x: Any) -> Any:
            self.probe(x)
            return x[:, :10] * 2

    class NeverCalled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: Any) -> Any:
            return x[:, :10] * 2

    x, y = _data(4)
    with pytest.raises(FeatureError, match=r"several Linear layers \('head', 'other'\).*features="):
        binarization_test(TwoHeads(), x, y, attack=attacks.PGD(steps=2), epsilon=EPS)
    with pytest.raises(FeatureError, match=r"not computed from any Linear.*'probe'.*features="):
        binarization_test(NotFromALinear(), x, y, attack=attacks.PGD(steps=2), epsilon=EPS)
    with pytest.raises(FeatureError, match=r"none of the torch.nn.Linear layers.*features="):
        binarization_test(NeverCalled(), x, y, attack=attacks.PGD(steps=2), epsilon=EPS)


def test_feature_layer_probe_leaves_batchnorm_statistics_and_rng_alone() -> None:
    body, head = _split_mlp()
    model = torch.nn.Sequential(body, torch.nn.BatchNorm1d(32), head).train()
    before = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    x, _ = _data(8)
    feature_extractor(model, None, probe=x)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    assert torch.equal(rng, torch.get_rng_state())


# ---------------------------------------------------------------------- 2. in-place attacks


def test_in_place_attack_is_not_a_false_pass_and_leaves_the_data_alone() -> None:
    """An attack writing a 3-epsilon PGD result into its input gets no credit."""
    x, y = _data()
    clean = x.clone()

    def in_place(model: Any, xs: Any, ys: Any, epsilon: float) -> Any:
        far = attacks.PGD("linf", steps=20)(model, xs, ys, epsilon=3 * epsilon)
        return xs.add_(far - xs)

    report = binarization_test(torch_mlp(), x, y, attack=in_place, epsilon=EPS)
    assert report.verdict != "passed", report.summary()
    assert any("modified its input" in w for w in report.warnings)
    assert all(s.distance > 2 * EPS for s in report.samples)
    assert torch.equal(x, clean)  # the caller's data (a session fixture's) is unchanged


def test_in_place_noise_attack_is_a_random_attack() -> None:
    x, y = _data()
    clean = x.clone()

    def noise_in_place(model: Any, xs: Any, ys: Any, epsilon: float) -> Any:
        return xs.copy_(torch.rand_like(xs))

    report = binarization_test(torch_mlp(), x, y, attack=noise_in_place, epsilon=EPS)
    assert report.verdict == "failed", report.summary()
    assert any("modified its input" in w for w in report.warnings)
    assert torch.equal(x, clean)


# ---------------------------------------------------------------------- 3. the user's model state


def _stateful_model() -> Any:
    """The digits MLP with dropout and batch norm, in training mode, one layer frozen.

    The batch norm alone is in eval mode (mixed flags to restore) and the
    dropout drops nothing: the model must be deterministic enough to set up,
    else the engine rightly skips the attack and the state checks below would
    not see it run.
    """
    body, head = _split_mlp()
    model = torch.nn.Sequential(body, torch.nn.BatchNorm1d(32), torch.nn.Dropout(0.0), head)
    model.train()
    model[1].eval()
    head.weight.requires_grad_(False)
    return model


def _meddle(model: Any, xs: Any, ys: Any, epsilon: float) -> Any:
    """A hostile attack function: switches modes, freezes everything, updates statistics."""
    model.eval()
    for module in model.modules():
        module.train()
    model(torch.rand_like(xs))  # batch-norm statistics move
    model.requires_grad_(False)
    return xs.clone()


def _paths() -> list[Any]:
    paths: list[Any] = [attacks.PGD("linf", steps=3), _meddle]
    try:
        import torchattacks

        paths.append(attacks.FromTorchattacks(torchattacks.PGD, steps=3, alpha=0.02))
    except ImportError:
        pass
    try:
        import foolbox

        paths.append(attacks.FromFoolbox(foolbox.attacks.LinfPGD(steps=3)))
    except ImportError:
        pass
    return paths


@pytest.mark.parametrize("attack", _paths(), ids=lambda a: type(a).__name__)
def test_user_model_state_is_unchanged_on_every_attack_path(attack: Any) -> None:
    from pytest_attacktest.engine.modelstate import state_of

    model = _stateful_model()
    before = state_of(model)
    x, y = _data(8)
    report = binarization_test(model, x, y, attack=attack, epsilon=EPS, n_inner=8, n_validation=4)
    assert report.n_conclusive > 0, report.summary()  # the attack ran
    assert state_of(model) == before
    assert model.training
    assert model[2].training  # dropout still on
    assert not model[1].training  # batch norm still in eval mode


def test_native_binarized_module_eval_leaves_the_defense_mode_alone() -> None:
    """``as_native().eval()`` (torchattacks calls it) switches only the wrapper."""
    seen: list[bool] = []
    model = _stateful_model()

    def look(native: Any, xs: Any, ys: Any, epsilon: float) -> Any:
        native.eval()
        seen.append(model.training)
        return xs

    x, y = _data(4)
    binarization_test(model, x, y, attack=look, epsilon=EPS, n_inner=8, n_validation=4)
    assert seen == [True]


# ---------------------------------------------------------------------- 4. detector masks


def test_detector_float_scores_are_refused_not_read_as_all_valid() -> None:
    x, y = _data(8)
    clean = x.clone()

    def scores(points: Any) -> Any:
        # 0.2 meant "invalid": far from the clean points.
        far = (points[:, None] - clean[None]).abs().amax(dim=2).amin(dim=1) > EPS * 1.01
        return torch.where(far, 0.2, 1.0)

    with pytest.raises(TypeError, match=r"boolean mask.*dtype torch.float32.*score < threshold"):
        binarization_test(
            torch_mlp(), x, y, attack=attacks.PGD(steps=3), epsilon=EPS, valid_input=scores
        )
    with pytest.raises(TypeError, match=r"boolean mask.*int64"):
        binarization_test(
            torch_mlp(),
            x,
            y,
            attack=attacks.PGD(steps=3),
            epsilon=EPS,
            valid_input=lambda t: np.ones(len(t), dtype=np.int64),
        )
    with pytest.raises(TypeError, match=r"boolean array.*list"):
        binarization_test(
            torch_mlp(),
            x,
            y,
            attack=attacks.PGD(steps=3),
            epsilon=EPS,
            valid_input=lambda t: [True] * len(t),
        )


def test_detector_boolean_masks_of_every_kind_are_accepted() -> None:
    x, y = _data(4)
    clean = x.clone()

    def near(t: Any) -> Any:  # False far from the clean points: the redraw path runs
        return (t[:, None] - clean[None]).abs().amax(dim=2).amin(dim=1) <= 0.5 * EPS

    for mask in (near, lambda t: near(t).numpy()):
        report = binarization_test(
            torch_mlp(),
            x,
            y,
            attack=attacks.PGD(steps=20),
            epsilon=EPS,
            valid_input=mask,
            n_inner=8,
            n_validation=4,
        )
        assert report.n_samples == 4
        assert report.verdict != "passed"  # every attack point beyond 0.5 epsilon is rejected


# ---------------------------------------------------------------------- 5. feature callables


class Quantized(torch.nn.Module):
    """Gradient masking: the digits MLP behind a 4-level input quantization."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch_mlp()

    def forward(self, x: Any) -> Any:
        return self.net(torch.round(x * 3) / 3)


def test_features_callable_that_ignores_the_model_is_not_a_false_pass() -> None:
    x, y = _data()
    # An error, not a verdict: a run that got as far as a verdict could pass.
    with pytest.raises(FeatureError, match=r"not an affine function.*residual is [0-9.e-]+"):
        binarization_test(
            Quantized().eval(),
            x,
            y,
            attack=attacks.PGD("linf", steps=20),
            epsilon=0.2,
            features=lambda t: t.flatten(1),
        )


def test_features_callable_of_the_model_is_accepted_and_its_residual_reported() -> None:
    x, y = _data(20)
    model = torch_mlp()
    report = binarization_test(
        model,
        x,
        y,
        attack=attacks.PGD("linf", steps=30),
        epsilon=EPS,
        features=lambda t: model[1](model[0](t)),
    )
    assert report.passed, report.summary()
    assert report.settings["features_residual"] < 1e-5


def test_features_callable_with_bpda_keeps_the_bpda_gradient() -> None:
    """With BPDA the callable is the inner model's: the adaptive attack still passes."""
    defended = Quantized().eval()
    inner = defended.net
    x, y = _data()
    bpda = attacks.BPDA(inner, lambda t: torch.round(t * 3) / 3)
    report = binarization_test(
        bpda,
        x,
        y,
        attack=attacks.PGD("linf", steps=30),
        epsilon=0.2,
        features=lambda t: inner[1](inner[0](t)),
    )
    assert report.passed, report.summary()


def test_features_callable_of_a_randomized_torch_defense_is_checked_with_its_noise() -> None:
    model = torch_mlp()

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, t: Any) -> Any:
            return self.net(t + 0.05 * torch.randn_like(t))

    x, y = _data(8)
    report = binarization_test(
        Noisy().eval(),
        x,
        y,
        attack=attacks.PGD("linf", steps=10),
        epsilon=EPS,
        features=lambda t: model[1](model[0](t + 0.05 * torch.randn_like(t))),
        n_inner=8,
        n_validation=4,
    )
    assert report.settings["features_residual"] < 1e-5


# ---------------------------------------------------------------------- 6. silently wrong


class _Wrapped(torch.nn.Module):
    """The digits MLP with its output passed through ``post``."""

    def __init__(self, post: Any) -> None:
        super().__init__()
        self.net = torch_mlp()
        self.post = post

    def forward(self, x: Any) -> Any:
        return self.post(self.net(x))


@pytest.mark.parametrize(
    ("post", "message"),
    [
        (lambda z: z.unsqueeze(-1), r"shape \(8, 10, 1\).*squeeze"),
        (lambda z: z[:, 0], r"shape \(8,\): one number per input.*stack\(\[-z, z\], 1\)"),
        (lambda z: z.masked_fill(z > 5, float("nan")), "NaN or inf logits"),
        (lambda z: z * float("inf"), "NaN or inf logits"),
    ],
    ids=["N-10-1", "N", "nan", "inf"],
)
def test_bad_model_outputs_get_clear_errors(post: Any, message: str) -> None:
    x, y = _data(8)
    with pytest.raises(ValueError, match=message):
        binarization_test(_Wrapped(post), x, y, attack=attacks.PGD(steps=2), epsilon=EPS)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda y: y + 10, r"outside \[0, 10\)"),
        (lambda y: y - 11, r"outside \[0, 10\)"),
        (lambda y: y[:5], r"shape \(5,\) for 8 inputs"),
        (lambda y: torch.nn.functional.one_hot(y, 10), r"one-hot.*argmax"),
        (lambda y: y.float() + 0.5, "integer class indices"),
    ],
    ids=["above", "negative", "short", "one-hot", "fractional"],
)
def test_bad_labels_get_clear_errors(labels: Any, message: str) -> None:
    x, y = _data(8)
    with pytest.raises(ValueError, match=message):
        binarization_test(torch_mlp(), x, labels(y), attack=attacks.PGD(steps=2), epsilon=EPS)


def test_float16_model_our_own_pgd_is_not_flagged_outside_the_ball() -> None:
    x, y = _data(16)
    model = torch_mlp().half()
    report = binarization_test(
        model, x.half(), y, attack=attacks.PGD("linf", steps=30), epsilon=0.2
    )
    assert not any(s.outside_ball for s in report.samples), report.summary()
    assert not any("outside the" in w for w in report.warnings)


def test_float16_ball_tolerance_still_refuses_a_clear_overshoot() -> None:
    from pytest_attacktest.engine.verification import ball_tolerance

    relative, absolute = ball_tolerance(torch.float16)
    assert 0.2 * (1 + relative) + absolute < 0.2 * 1.05
    assert ball_tolerance(torch.float32) == (1e-5, 2.4e-7)


# ---------------------------------------------------------------------- 7. framework errors


def test_dtype_mismatch_names_the_fix() -> None:
    x, y = _data(8)
    with pytest.raises(TypeError, match=r"different dtypes.*x.double\(\)"):
        binarization_test(torch_mlp().double(), x, y, attack=attacks.PGD(steps=2), epsilon=EPS)


def test_batchnorm_in_training_mode_names_the_fix() -> None:
    body, head = _split_mlp()
    model = torch.nn.Sequential(body, torch.nn.BatchNorm1d(32), head).train()
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"batch norm in training mode.*model.eval\(\)"):
        binarization_test(model, x, y, attack=attacks.PGD(steps=2), epsilon=EPS, max_batch=1)


def test_model_modifying_its_input_in_place_is_refused() -> None:
    x, y = _data(8)
    net = torch_mlp()
    with pytest.raises(ValueError, match=r"modifies its input in place.*x.clone\(\)"):
        binarization_test(
            lambda t: net(t.add_(0.01)), x, y, attack=attacks.PGD(steps=2), epsilon=EPS
        )


def test_model_refusing_batches_over_20_runs_with_max_batch() -> None:
    net = torch_mlp()
    sizes: list[int] = []

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: Any) -> Any:
            sizes.append(len(t))
            if len(t) > 20:
                raise RuntimeError(f"batch of {len(t)} > 20")
            return self.net(t)

    x, y = _data(24)
    with pytest.raises(RuntimeError, match="batch of"):
        binarization_test(Small(), x, y, attack=attacks.PGD(steps=5), epsilon=EPS, chunk_size=1)
    sizes.clear()
    report = binarization_test(
        Small(), x, y, attack=attacks.PGD(steps=20), epsilon=EPS, max_batch=20
    )
    assert max(sizes) <= 20
    assert report.passed, report.summary()
    assert report.settings["max_batch"] == 20


def test_forward_errors_name_the_batch_size() -> None:
    def refuse(t: Any) -> Any:
        raise RuntimeError("the server refused")

    x, y = _data(8)
    with pytest.raises(RuntimeError, match="refused") as info:
        binarization_test(refuse, x, y, attack=attacks.PGD(steps=2), epsilon=EPS)
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "batch of 8 inputs" in notes or not hasattr(info.value, "add_note")
    assert "max_batch" in notes or not hasattr(info.value, "add_note")


# ---------------------------------------------------------- 7. settings of a direct call


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"verify_passes": 0}, "verify_passes must be a positive integer, got 0"),
        ({"feature_passes": 0}, "feature_passes must be a positive integer, got 0"),
        ({"average_passes": 0}, 'average_passes must be "auto" or a positive integer, got 0'),
        ({"n_inner": -3}, "n_inner must be a positive integer, got -3"),
        ({"n_boundary": 2.5}, "n_boundary must be a positive integer, got 2.5"),
        ({"n_validation": -1}, "n_validation must be an integer >= 0"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"max_batch": 0}, "max_batch must be a positive integer"),
        ({"corners": 1}, "corners must be True or False"),
        ({"closeness": 1.0}, r"closeness must be a number in \[0, 1\)"),
        ({"norm": "l-inf"}, "unknown norm 'l-inf'"),
        ({"epsilon": True}, "epsilon must be a positive finite number, got True"),
        ({"threshold": np.bool_(True)}, "threshold must be a number"),
        ({"valid_input": "yes"}, "valid_input must be None or a function"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_direct_call_settings_get_the_markers_clear_errors(
    kwargs: dict[str, Any], message: str
) -> None:
    from pytest_attacktest.engine.options import SettingsError

    x, y = _data(4)
    args: dict[str, Any] = {"attack": attacks.PGD(steps=1), "epsilon": EPS}
    args.update(kwargs)
    with pytest.raises(SettingsError, match=message):
        binarization_test(torch_mlp(), x, y, **args)


def test_numpy_floating_epsilon_is_accepted() -> None:
    x, y = _data(4)
    report = binarization_test(
        torch_mlp(), x, y, attack=attacks.PGD(steps=2), epsilon=np.float32(0.1), n_inner=8
    )
    assert report.epsilon == pytest.approx(0.1)
    assert type(report.epsilon) is float


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (lambda xs: None, "returned None.*missing return"),
        (lambda xs: torch.Tensor, "returned the class Tensor"),
        (lambda xs: xs.tolist(), "returned list"),
        (lambda xs: (xs, xs), "returned tuple"),
        (lambda xs: xs[:2], r"returned shape \(2, 64\) for inputs of shape \(4, 64\)"),
    ],
    ids=["None", "class", "list", "tuple", "shape"],
)
def test_attack_returning_the_wrong_thing_gets_a_clear_error(result: Any, message: str) -> None:
    x, y = _data(4)

    def attack(model: Any, xs: Any, ys: Any, epsilon: float) -> Any:
        return result(xs)

    with pytest.raises((TypeError, ValueError), match=message):
        binarization_test(torch_mlp(), x, y, attack=attack, epsilon=EPS, n_inner=8)


def test_attack_returning_numpy_for_a_torch_model_is_converted() -> None:
    x, y = _data(20)

    def pgd_numpy(model: Any, xs: Any, ys: Any, epsilon: float) -> Any:
        return attacks.PGD("linf", steps=30)(model, xs, ys, epsilon=epsilon).numpy()

    report = binarization_test(torch_mlp(), x, y, attack=pgd_numpy, epsilon=EPS)
    assert report.passed, report.summary()


def test_one_conclusive_sample_is_not_a_verdict() -> None:
    """A lucky success on a few samples does not pass: 10 conclusive samples are needed."""
    x, y = _data(9)
    pgd = attacks.PGD("linf", steps=30)
    report = binarization_test(torch_mlp(), x, y, attack=pgd, epsilon=EPS)
    assert report.n_conclusive == 9
    assert report.asr == 1.0
    assert report.verdict == "error", report.summary()
    assert "at least 10" in report.summary()
    one = binarization_test(torch_mlp(), x[:1], y[:1], attack=pgd, epsilon=EPS)
    assert one.verdict != "passed"
    lowered = binarization_test(torch_mlp(), x, y, attack=pgd, epsilon=EPS, min_conclusive=9)
    assert lowered.passed, lowered.summary()

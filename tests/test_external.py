"""Third-party attacks run through the adapters: unchanged, projected, with clear errors.

Every test attacks the digits MLP (trained in-process) and checks real
behaviour: the adapter's robust accuracy matches the library called directly,
results lie in the bounds and the ball even when the third-party code leaves
them, per-sample budgets are honoured sample by sample, and misuse (a
torch-only library on a JAX model, a missing package, an attack object where
a factory is needed) fails with a message that says what to do.
"""

from __future__ import annotations

import math
import sys
from typing import Any, ClassVar

import numpy as np
import pytest
from digits_models import accuracy, held_out, native_mlp, numpy_mlp
from framework_support import to_native, to_numpy

import attacks
from attacks.external import FromAutoAttack, FromFoolbox, FromFunction, FromTorchattacks

EPS = 0.1
#: float32 rounding of x + delta next to 1.0 (half an ulp per coordinate, twice).
FLOAT32_ROUNDING = 1.2e-7


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


@pytest.fixture
def torchattacks(torch: Any) -> Any:
    return pytest.importorskip("torchattacks")


@pytest.fixture
def foolbox() -> Any:
    return pytest.importorskip("foolbox")


@pytest.fixture
def data(torch: Any) -> tuple[Any, Any, Any, np.ndarray]:
    """(torch model, x, y as torch tensors, y as NumPy) for 64 held-out digits."""
    x, y = held_out(64)
    return native_mlp("torch"), torch.from_numpy(x), torch.from_numpy(y), y


def linf(x: Any, x_adv: Any) -> np.ndarray:
    d = np.abs(to_numpy(x_adv).astype(np.float64) - to_numpy(x).astype(np.float64))
    return np.asarray(d.reshape(len(d), -1).max(axis=1))


def assert_in_threat_model(x: Any, x_adv: Any, eps: Any) -> None:
    adv = to_numpy(x_adv)
    assert adv.min() >= 0.0
    assert adv.max() <= 1.0
    assert np.all(linf(x, x_adv) <= np.asarray(eps) + FLOAT32_ROUNDING)


def torch_pgd(model: Any, x: Any, y: Any, epsilon: Any, steps: int = 10) -> Any:
    """A few hand-written PGD steps in plain torch (the 'paper script' a user brings)."""
    import torch as t

    eps = epsilon if isinstance(epsilon, float) else epsilon.view(-1, 1)
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = t.nn.functional.cross_entropy(model(x_adv), y)
        (grad,) = t.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + 0.25 * eps * grad.sign()
        x_adv = t.clamp(t.min(t.max(x_adv, x - eps), x + eps), 0, 1)
    return x_adv


# ---------------------------------------------------------------------- FromFunction


def test_plain_function_attack_runs_and_fools_the_model(data: Any) -> None:
    model, x, y, y_np = data
    x_adv = FromFunction(torch_pgd)(model, x, y, epsilon=EPS)
    assert type(x_adv) is type(x)
    assert_in_threat_model(x, x_adv, EPS)
    clean, robust = accuracy(model, x, y_np), accuracy(model, x_adv, y_np)
    assert robust < clean - 0.4, (clean, robust)
    # The adapter changes nothing about the function: same result as calling it directly.
    direct = torch_pgd(model, x, y, float(np.float32(EPS)))
    assert np.max(linf(direct, x_adv)) <= 1e-6


def test_result_outside_ball_and_bounds_is_projected(data: Any, torch: Any) -> None:
    model, x, y, _ = data
    returned = []

    def reckless(native: Any, x_: Any, y_: Any, epsilon: float) -> Any:
        # 5 epsilon away in every coordinate, half of them also far below the bounds.
        signs = torch.where(torch.arange(x_.shape[1]) % 2 == 0, 1.0, -20.0)
        out = x_ + 5 * epsilon * signs
        returned.append(out)
        return out

    x_adv = FromFunction(reckless)(model, x, y, epsilon=EPS)
    outside = returned[0]
    assert linf(x, outside).min() > 4 * EPS
    assert float(outside.min()) < 0
    assert_in_threat_model(x, x_adv, EPS)
    # Projection keeps the direction: coordinates pushed up moved up by (almost) epsilon
    # where the bounds allow.
    up = (to_numpy(x_adv) - to_numpy(x))[:, ::2]
    room = 1 - to_numpy(x)[:, ::2]
    assert np.allclose(up, np.minimum(room, EPS), atol=1e-6)


def test_function_receives_float_or_per_sample_tensor_and_target(data: Any, torch: Any) -> None:
    model, x, y, _ = data
    seen: dict[str, Any] = {}

    def spy(native: Any, x_: Any, y_: Any, epsilon: Any, **kw: Any) -> Any:
        seen.update(native=native, y=y_, epsilon=epsilon, **kw)
        return x_

    FromFunction(spy)(model, x, y, epsilon=EPS)
    assert seen["native"] is model
    assert isinstance(seen["epsilon"], float)
    assert math.isclose(seen["epsilon"], EPS, rel_tol=1e-6)
    assert seen["y"].dtype == torch.int64
    assert "target" not in seen

    per_sample = np.linspace(0.05, 0.2, len(x)).astype(np.float32)
    target = (y + 1) % 10
    FromFunction(spy)(model, x, y.int(), epsilon=per_sample, target=target.int())
    assert isinstance(seen["epsilon"], torch.Tensor)
    assert seen["epsilon"].shape == (len(x),)
    assert np.allclose(to_numpy(seen["epsilon"]), per_sample)
    assert seen["y"].dtype == torch.int64  # cast for torch losses
    assert torch.equal(seen["target"], target)


def test_per_sample_epsilon_reaches_each_budget(data: Any) -> None:
    model, x, y, _ = data
    eps = np.where(np.arange(len(x)) % 2 == 0, 0.05, 0.2).astype(np.float32)
    x_adv = FromFunction(torch_pgd)(model, x, y, epsilon=eps)
    dist = linf(x, x_adv)
    assert np.all(dist <= eps + FLOAT32_ROUNDING)
    assert np.all(dist[1::2] > 0.15)  # the large budget was used where it was given


def test_uses_gradient_flag_gates_numpy_models() -> None:
    x, y = held_out(16)

    def noise(native: Any, x_: Any, y_: Any, epsilon: float) -> Any:
        return x_ + epsilon * np.sign(np.sin(np.arange(x_.size))).reshape(x_.shape)

    x_adv = FromFunction(noise, uses_gradient=False)(numpy_mlp(), x, y, epsilon=EPS)
    assert isinstance(x_adv, np.ndarray)
    assert_in_threat_model(x, x_adv, EPS)
    with pytest.raises(TypeError, match="needs gradients"):
        FromFunction(noise)(numpy_mlp(), x, y, epsilon=EPS)


def test_broken_results_become_clean_points_and_wrong_types_fail(data: Any, torch: Any) -> None:
    model, x, y, _ = data

    def half_nan(native: Any, x_: Any, y_: Any, epsilon: float) -> Any:
        out = torch.clamp(x_ + epsilon, 0, 1)
        out[::2, 3] = float("nan")
        return out

    x_adv = to_numpy(FromFunction(half_nan)(model, x, y, epsilon=EPS))
    assert not np.isnan(x_adv).any()
    assert np.array_equal(x_adv[::2], to_numpy(x)[::2])
    assert np.all(linf(x, x_adv)[1::2] > EPS / 2)

    class Foreign:  # shaped like x, but no tensor of any framework we know
        shape = tuple(x.shape)

    with pytest.raises(TypeError, match="returned a Foreign for torch inputs"):
        FromFunction(lambda m, x_, y_, e: Foreign())(model, x, y, epsilon=EPS)
    with pytest.raises(TypeError, match="must return one tensor"):
        FromFunction(lambda m, x_, y_, e: (x_, True))(model, x, y, epsilon=EPS)


# ---------------------------------------------------------------------- torchattacks


def test_torchattacks_pgd_matches_calling_torchattacks_directly(
    data: Any, torch: Any, torchattacks: Any
) -> None:
    model, x, y, y_np = data
    torch.manual_seed(0)
    direct = torchattacks.PGD(model, eps=EPS, alpha=0.02, steps=10)(x, y)
    torch.manual_seed(0)
    x_adv = FromTorchattacks(torchattacks.PGD, steps=10, alpha=0.02)(model, x, y, epsilon=EPS)
    assert_in_threat_model(x, x_adv, EPS)
    robust, robust_direct = accuracy(model, x_adv, y_np), accuracy(model, direct, y_np)
    assert robust < accuracy(model, x, y_np) - 0.4
    assert abs(robust - robust_direct) <= 0.03, (robust, robust_direct)


def test_torchattacks_per_sample_epsilon_targeted_and_plain_callables(
    data: Any, torch: Any, torchattacks: Any
) -> None:
    model, x, y, _ = data
    eps = np.where(np.arange(len(x)) % 3 == 0, 0.3, 0.05).astype(np.float32)
    adapter = FromTorchattacks(torchattacks.PGD, steps=10, alpha=0.03)
    x_adv = adapter(model, x, y, epsilon=eps)
    dist = linf(x, x_adv)
    assert np.all(dist <= eps + FLOAT32_ROUNDING)
    assert np.all(dist[::3] > 0.25)  # groups were put back in their places

    target = (y + 3) % 10
    x_adv = adapter(lambda t: model(t), x, y, epsilon=0.3, target=target)  # a plain callable
    hit = (to_numpy(model(x_adv)).argmax(axis=1) == to_numpy(target)).mean()
    assert hit > 0.8, hit


def test_torchattacks_refuses_non_torch_models_other_bounds_and_attack_objects(
    data: Any, torchattacks: Any
) -> None:
    pytest.importorskip("jax")
    x, y = held_out(8)
    adapter = FromTorchattacks(torchattacks.PGD, steps=2)
    with pytest.raises(TypeError, match="PyTorch models only, but the model is a jax model"):
        adapter(native_mlp("jax"), to_native("jax", x), y, epsilon=EPS)
    model, xt, yt, _ = data
    with pytest.raises(ValueError, match=r"assumes inputs in \[0, 1\]"):
        adapter(attacks.Model(model, bounds=(0, 2)), xt, yt, epsilon=EPS)
    with pytest.raises(TypeError, match="not an attack object"):
        FromTorchattacks(torchattacks.PGD(model, eps=EPS))
    with pytest.raises(ValueError, match="eps= is set per call"):
        FromTorchattacks(torchattacks.PGD, eps=EPS)


# ---------------------------------------------------------------------- Foolbox


def test_foolbox_linf_pgd_matches_calling_foolbox_directly(
    data: Any, torch: Any, foolbox: Any
) -> None:
    model, x, y, y_np = data
    attack = foolbox.attacks.LinfPGD(steps=10, abs_stepsize=0.02)
    torch.manual_seed(0)
    x_adv = FromFoolbox(attack)(model, x, y, epsilon=EPS)
    assert all(p.grad is None for p in model.parameters())  # no gradient leaked into the model
    torch.manual_seed(0)
    _, direct, _ = attack(foolbox.PyTorchModel(model, (0, 1)), x, y, epsilons=EPS)
    assert any(p.grad is not None for p in model.parameters())  # what Foolbox alone does
    assert_in_threat_model(x, x_adv, EPS)
    robust, robust_direct = accuracy(model, x_adv, y_np), accuracy(model, direct, y_np)
    assert robust < accuracy(model, x, y_np) - 0.4
    assert abs(robust - robust_direct) <= 0.03, (robust, robust_direct)


def test_foolbox_norm_comes_from_the_attack(foolbox: Any) -> None:
    assert FromFoolbox(foolbox.attacks.L2PGD()).norm == "l2"
    assert FromFoolbox(foolbox.attacks.LinfPGD()).norm == "linf"
    with pytest.raises(ValueError, match=r"contradicts Linf.*attacks in Linf"):
        FromFoolbox(foolbox.attacks.LinfPGD(), norm="l2")


def test_foolbox_targeted(data: Any, foolbox: Any) -> None:
    model, x, y, _ = data
    target = (y + 3) % 10
    attack = FromFoolbox(foolbox.attacks.LinfPGD(steps=10, abs_stepsize=0.03))
    x_adv = attack(model, x, y, epsilon=0.3, target=target)
    assert_in_threat_model(x, x_adv, 0.3)
    hit = (to_numpy(model(x_adv)).argmax(axis=1) == to_numpy(target)).mean()
    assert hit > 0.8, hit


@pytest.mark.parametrize(
    "framework",
    [
        pytest.param("tensorflow", marks=pytest.mark.tensorflow),
        pytest.param("jax", marks=pytest.mark.jax),
    ],
)
def test_foolbox_on_tensorflow_and_jax_models(framework: str, foolbox: Any) -> None:
    pytest.importorskip(framework)
    x, y = held_out(32)
    model = native_mlp(framework)
    attack = FromFoolbox(foolbox.attacks.LinfPGD(steps=3, abs_stepsize=0.05))
    x_adv = attack(model, to_native(framework, x), to_native(framework, y), epsilon=EPS)
    assert type(x_adv) is type(to_native(framework, x))
    assert_in_threat_model(x, x_adv, EPS)
    assert accuracy(model, x_adv, y) < accuracy(model, to_native(framework, x), y) - 0.3


# ---------------------------------------------------------------------- AutoAttack-style


class FakeAutoAttack:
    """AutoAttack's shape (model and eps bound at construction), running our PGD inside."""

    calls: ClassVar[list[tuple[Any, float, int]]] = []

    def __init__(self, model: Any, norm: str = "Linf", eps: float = 8 / 255) -> None:
        self.model, self.eps, self.norm = model, eps, norm.lower()

    def run_standard_evaluation(self, x: Any, y: Any, bs: int = 250) -> Any:
        import torch as t

        FakeAutoAttack.calls.append((self.model, self.eps, bs))
        pgd = attacks.PGD(self.norm, steps=10)
        return t.cat(
            [
                pgd(self.model, x[i : i + bs], y[i : i + bs], epsilon=self.eps)
                for i in range(0, len(x), bs)
            ]
        )


def test_autoattack_style_object_and_plain_callable(data: Any) -> None:
    model, x, y, y_np = data
    FakeAutoAttack.calls.clear()
    adapter = FromAutoAttack(lambda m, eps: FakeAutoAttack(m, norm="Linf", eps=eps), batch_size=16)
    x_adv = adapter(model, x, y, epsilon=EPS)
    assert_in_threat_model(x, x_adv, EPS)
    assert [(m is model, bs) for m, _, bs in FakeAutoAttack.calls] == [(True, 16)]
    assert math.isclose(FakeAutoAttack.calls[0][1], EPS, rel_tol=1e-6)
    ours = attacks.PGD("linf", steps=10)(model, x, y, epsilon=EPS)
    # Chunks of 16 draw other random starts than one batch of 64: close, not equal.
    assert abs(accuracy(model, x_adv, y_np) - accuracy(model, ours, y_np)) <= 0.05
    assert accuracy(model, x_adv, y_np) < accuracy(model, x, y_np) - 0.4

    def factory(m: Any, eps: float) -> Any:
        return lambda x_, y_: attacks.PGD(steps=10)(m, x_, y_, epsilon=eps)

    x_adv2 = FromAutoAttack(factory)(model, x, y, epsilon=EPS)
    assert np.max(linf(ours, x_adv2)) <= 1e-6  # one batch, same seed: the same points


def test_autoattack_misuse_is_explained(data: Any) -> None:
    model, x, y, _ = data
    with pytest.raises(TypeError, match="pass a factory, not an AutoAttack object"):
        FromAutoAttack(FakeAutoAttack(model))  # type: ignore[arg-type]
    adapter = FromAutoAttack(lambda m, eps: FakeAutoAttack(m, eps=eps))
    with pytest.raises(ValueError, match="untargeted only"):
        adapter(model, x, y, epsilon=EPS, target=(y + 1) % 10)
    with pytest.raises(TypeError, match="run_standard_evaluation"):
        FromAutoAttack(lambda m, eps: 42)(model, x, y, epsilon=EPS)


# ---------------------------------------------------------------------- missing libraries


@pytest.mark.parametrize(
    ("module", "make"),
    [
        ("foolbox", lambda: FromFoolbox(lambda *a, **k: None, norm="linf")),
        ("torchattacks", lambda: FromTorchattacks(lambda model, eps: None)),
    ],
)
def test_missing_library_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, module: str, make: Any
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=f"needs the '{module}' package.*pip install {module}"):
        make()

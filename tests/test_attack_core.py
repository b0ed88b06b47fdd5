"""The attack protocol's guarantees and errors: Model, backend and the base class.

These are checked with FGSM/PGD on the digits MLP; every attack goes through
the same final ``Attack.__call__``, so what holds here holds for all of them.
"""

from __future__ import annotations

import math
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from digits_models import accuracy, held_out, native_mlp, numpy_mlp, torch_mlp
from framework_support import framework_params, to_native, to_numpy

import attacks
from attacks import backend

GRADIENT_FRAMEWORKS = [f for f in framework_params() if f.id != "numpy"]


#: Rounding of a float32 point near 1 is half an ulp (6e-8) per coordinate.
FLOAT32_ROUNDING = 1.2e-7


def _norms(x: np.ndarray, x_adv: np.ndarray, p: float) -> np.ndarray:
    d = np.abs(x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    return d.max(axis=1) if math.isinf(p) else (d**p).sum(axis=1) ** (1 / p)


@pytest.mark.parametrize("framework", GRADIENT_FRAMEWORKS)
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0), ("l1", 4.0)])
def test_pgd_fools_the_digits_mlp_and_respects_the_threat_model(
    framework: str, norm: str, eps: float
) -> None:
    x, y = held_out(48)
    model = native_mlp(framework)
    clean = accuracy(model, to_native(framework, x), y)
    steps = 10 if framework == "jax" else 20
    x_adv = attacks.PGD(norm, steps=steps)(
        model, to_native(framework, x), to_native(framework, y), epsilon=eps
    )
    assert type(x_adv) is type(to_native(framework, x))
    adv = to_numpy(x_adv)
    assert adv.shape == x.shape
    assert adv.dtype == x.dtype
    assert adv.min() >= 0.0
    assert adv.max() <= 1.0
    assert _norms(x, adv, attacks.parse_p(norm)).max() <= eps + FLOAT32_ROUNDING * x.shape[1]
    robust = accuracy(model, x_adv, y)
    assert clean > 0.85
    assert robust < clean - 0.4, f"PGD {norm} barely moved accuracy: {clean} -> {robust}"


def test_pgd_is_stronger_than_fgsm_and_more_steps_do_not_hurt() -> None:
    x, y = held_out(64)
    model = torch_mlp()
    xt, yt = to_native("torch", x), to_native("torch", y)
    fgsm = accuracy(model, attacks.FGSM()(model, xt, yt, epsilon=0.08), y)
    pgd10 = accuracy(model, attacks.PGD(steps=10)(model, xt, yt, epsilon=0.08), y)
    pgd40 = accuracy(model, attacks.PGD(steps=40)(model, xt, yt, epsilon=0.08), y)
    assert pgd10 < fgsm
    assert pgd40 <= pgd10 + 1 / 64


def test_pgd_keeps_an_adversarial_iterate_found_on_the_way() -> None:
    """With a huge step the last iterate may overshoot back; the kept one must still fool."""
    x, y = held_out(32)
    model = torch_mlp()
    xt, yt = to_native("torch", x), to_native("torch", y)
    attack = attacks.PGD("linf", steps=5, rel_stepsize=1.0, random_start=False)
    x_adv = attack(model, xt, yt, epsilon=0.3)
    assert accuracy(model, x_adv, y) == 0.0


@pytest.mark.parametrize("framework", GRADIENT_FRAMEWORKS)
def test_seeded_runs_reproduce_and_inputs_stay_untouched(framework: str) -> None:
    x, y = held_out(16)
    model = native_mlp(framework)
    xn, yn = to_native(framework, x), to_native(framework, y)
    first = to_numpy(attacks.PGD("l2", steps=3, seed=7)(model, xn, yn, epsilon=1.0))
    second = to_numpy(attacks.PGD("l2", steps=3, seed=7)(model, xn, yn, epsilon=1.0))
    other = to_numpy(attacks.PGD("l2", steps=3, seed=8)(model, xn, yn, epsilon=1.0))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(to_numpy(xn), x)
    np.testing.assert_array_equal(to_numpy(yn), y)


def test_torch_gradients_do_not_accumulate_in_the_model() -> None:
    """EagerPy 0.30.0 calls loss.backward(): parameters would collect .grad. Ours must not."""
    torch = pytest.importorskip("torch")
    model = torch_mlp()
    x, y = held_out(8)
    attacks.PGD(steps=3)(model, torch.from_numpy(x), torch.from_numpy(y), epsilon=0.1)
    assert all(p.grad is None for p in model.parameters())


def test_upstream_eagerpy_value_and_grad_leaks_into_torch_parameters() -> None:
    """The bug backend.value_and_grad works around; when this fails, upstream is fixed."""
    torch = pytest.importorskip("torch")
    model = torch_mlp()
    x, y = held_out(4)

    def loss(t: ep.Tensor) -> ep.Tensor:
        return ep.crossentropy(ep.astensor(model(t.raw)), ep.astensor(torch.from_numpy(y))).sum()

    ep.value_and_grad(loss, ep.astensor(torch.from_numpy(x)))
    assert any(p.grad is not None for p in model.parameters())


def test_numpy_inputs_to_a_torch_model_come_back_as_numpy() -> None:
    x, y = held_out(8)
    x_adv = attacks.PGD(steps=2)(torch_mlp(), x, y, epsilon=0.1)
    assert isinstance(x_adv, np.ndarray)
    assert x_adv.dtype == np.float32
    assert _norms(x, x_adv, math.inf).max() <= 0.1 + FLOAT32_ROUNDING


def test_per_sample_epsilon() -> None:
    x, y = held_out(4)
    eps = np.array([0.0 + 1e-3, 0.05, 0.1, 0.2])
    x_adv = attacks.PGD(steps=3)(torch_mlp(), x, y, epsilon=eps)
    assert (_norms(x, x_adv, math.inf) <= eps + FLOAT32_ROUNDING).all()
    assert _norms(x, x_adv, math.inf)[0] < 0.01


def test_torch_model_in_training_mode_warns() -> None:
    model = torch_mlp().train()
    x, y = held_out(4)
    with pytest.warns(UserWarning, match=r"model.eval\(\)"):
        attacks.FGSM()(model, x, y, epsilon=0.1)


def test_attacks_model_bounds_are_used() -> None:
    """Inputs in [-1, 1]: with bounds (-1, 1) the attack may go below 0."""
    torch = pytest.importorskip("torch")
    base = torch_mlp()
    model = attacks.Model(lambda t: base((t + 1) / 2), bounds=(-1, 1))
    x, y = held_out(16)
    x2 = x * 2 - 1
    x_adv = to_numpy(
        attacks.PGD(steps=5)(model, torch.from_numpy(x2), torch.from_numpy(y), epsilon=0.2)
    )
    assert x_adv.min() >= -1.0
    assert x_adv.min() < 0.0


# ---------------------------------------------------------------------- clear errors


def _call(**overrides: Any) -> Any:
    x, y = held_out(4)
    args: dict[str, Any] = {"model": torch_mlp(), "x": x, "y": y, "epsilon": 0.1}
    args.update(overrides)
    attack = args.pop("attack", attacks.PGD(steps=1))
    return attack(args.pop("model"), args.pop("x"), args.pop("y"), **args)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"epsilon": 0.0}, ValueError, "epsilon must be positive"),
        ({"epsilon": -0.1}, ValueError, "epsilon must be positive"),
        ({"epsilon": None}, ValueError, "needs epsilon"),
        ({"epsilon": np.ones(3)}, ValueError, "one entry per sample"),
        ({"x": held_out(4)[0] * 2}, ValueError, "outside the model's bounds"),
        ({"x": held_out(4)[0].reshape(-1)}, ValueError, "batch"),
        ({"y": np.zeros(3, dtype=np.int64)}, ValueError, r"y must have shape \(4,\)"),
        ({"y": np.zeros(4, dtype=np.float32)}, TypeError, "integer class indices"),
        ({"x": held_out(4)[0].astype(np.int64)}, TypeError, "floating point"),
        ({"model": numpy_mlp()}, TypeError, "Square"),
    ],
)
def test_bad_input_gets_a_clear_error(overrides: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _call(**overrides)


def test_unsupported_norm_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="'l1', 'l2' or 'linf'"):
        attacks.PGD("l3")


def test_nan_inputs_are_rejected() -> None:
    x, y = held_out(4)
    x = x.copy()
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        attacks.PGD(steps=1)(torch_mlp(), x, y, epsilon=0.1)


def test_model_returning_a_tuple_is_explained() -> None:
    torch = pytest.importorskip("torch")
    base = torch_mlp()
    x, y = held_out(4)
    with pytest.raises(TypeError, match="one logits tensor"):
        attacks.PGD(steps=1)(
            lambda t: (base(t), t), torch.from_numpy(x), torch.from_numpy(y), epsilon=0.1
        )


def test_mismatched_frameworks_are_explained() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    import jax.numpy as jnp

    x, y = held_out(4)
    with pytest.raises(TypeError, match="torch model but the inputs are jax"):
        attacks.PGD(steps=1)(torch_mlp(), jnp.asarray(x), jnp.asarray(y), epsilon=0.1)
    del torch


def test_model_constructor_checks() -> None:
    with pytest.raises(TypeError, match="callable"):
        attacks.Model(42)
    with pytest.raises(ValueError, match="lower < upper"):
        attacks.Model(numpy_mlp(), bounds=(1, 0))
    with pytest.raises(ValueError, match="framework must be one of"):
        attacks.Model(numpy_mlp(), framework="mxnet")


@pytest.mark.parametrize("framework", framework_params())
def test_random_source_is_seeded_per_run_and_keeps_dtype(framework: str) -> None:
    like = ep.astensor(to_native(framework, np.zeros((2, 3), dtype=np.float32)))
    a = backend.RandomSource(3, like).uniform((2, 3), -1, 1)
    b = backend.RandomSource(3, like).uniform((2, 3), -1, 1)
    c = backend.RandomSource(4, like).normal((2, 3))
    assert a.dtype == like.dtype
    assert c.dtype == like.dtype
    np.testing.assert_array_equal(to_numpy(a.raw), to_numpy(b.raw))
    assert (np.abs(to_numpy(a.raw)) <= 1).all()


def test_torch_modules_are_found_behind_every_wrapper_and_only_through_the_given_ones() -> None:
    torch = pytest.importorskip("torch")
    net, preprocessor = torch_mlp(), torch.nn.Identity()
    bpda = attacks.BPDA(net, preprocess=preprocessor)
    wrapped = attacks.EOT(bpda, n=1)
    assert backend.torch_modules(net) == [net]
    assert backend.torch_module(attacks.Model(net, bounds=(0, 1))) is net
    assert backend.torch_module(wrapped) is net  # through EOT's and BPDA's .inner
    assert backend.torch_modules(wrapped) == [net, preprocessor]  # .preprocess too
    assert backend.torch_modules(wrapped, through=("native",)) == []
    assert backend.torch_modules(net.forward) == [net]  # a bound method's __self__
    assert backend.torch_modules(bpda, through=("native", "inner"), max_depth=0) == []


def test_torch_modules_end_on_a_cycle_of_wrappers() -> None:
    pytest.importorskip("torch")

    class Wrapper:
        inner: Any = None

    first, second = Wrapper(), Wrapper()
    first.inner, second.inner = second, first
    assert backend.torch_modules(first) == []


def test_half_precision_ulp_is_read_from_every_frameworks_dtype_names() -> None:
    torch = pytest.importorskip("torch")
    assert backend.half_precision_ulp(torch.bfloat16) == 2.0**-7
    assert backend.half_precision_ulp(torch.float16) == 2.0**-10
    assert backend.half_precision_ulp(np.dtype("float16")) == 2.0**-10
    assert backend.half_precision_ulp("bfloat16") == 2.0**-7  # JAX's and Keras's names
    assert backend.half_precision_ulp(torch.float32) is None
    assert backend.half_precision_ulp(np.dtype("float64")) is None


@pytest.mark.parametrize("framework", framework_params())
def test_from_numpy_like_gives_the_framework_of_the_tensor_it_is_like(framework: str) -> None:
    like = to_native(framework, np.zeros((2, 3), dtype=np.float32))
    for given in (like, ep.astensor(like)):
        out = backend.from_numpy_like(np.arange(3, dtype=np.int64), given)
        assert backend.tensor_framework(out) == framework
        np.testing.assert_array_equal(backend.to_numpy(out), [0, 1, 2])
        if framework == "torch":
            assert out.device == like.device


def test_no_grad_stops_the_torch_graph_only_for_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    with backend.no_grad(ep.astensor(torch.zeros(1))):
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    with backend.no_grad(np.zeros(1)):
        assert torch.is_grad_enabled()

"""The same model in NumPy, PyTorch, Keras and JAX gets the same binarization test results.

The digits MLP's weights are loaded into each framework; the features are the
input of its final linear layer (found automatically for PyTorch, a
hand-written function of the same weights elsewhere, so these tests do not
depend on each framework's feature adapter). Two levels of agreement:

- Same random draws: each framework draws its random numbers with its own
  generator on its own device (:class:`attacks.backend.RandomSource`), so by
  default the sampled training points and the attacks' random starts differ.
  Here a test-local source draws them in NumPy from the seed and converts
  them, so every framework sees the same points. Then every per-sample result
  must agree: conclusive status, attack success (also for weak attacks that
  miss about half the samples, so the pattern of misses is compared), the
  validation accuracies, distances to 1e-6, fitted-readout training margins
  to 1e-6 relative and the attack point's readout logit to 1e-3 (float32
  features in each framework, readouts fitted in float64; measured
  differences: margins 1e-10 relative, logits 1e-4).
- Each framework's own random streams, the same seed: the verdicts agree, and
  for the strong attacks the ASR (1.0) and every sample's conclusive status
  (Square without JAX here, for time: see the test).
  ASRs of weak attacks then differ (measured: PGD with one step 0.31 to 0.69 on
  16 samples), because the points differ.

JAX runs with float64 enabled (as elsewhere in the suite) so that its readouts
are fitted in float64 like the others'.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import numpy as np
import pytest
from digits_models import held_out, mlp_weights, native_mlp
from framework_support import FRAMEWORKS, enable_jax_float64, to_native
from helpers import identity

import attacks
from attacks import backend
from pytest_attacktest import Report, binarization_test

EPS = 0.1
SAMPLES = 16
SEED = 3
#: Stated tolerances (see the module docstring for the measured differences).
MARGIN_RTOL = 1e-6
LOGIT_ATOL = 1e-3
DISTANCE_ATOL = 1e-6

INSTALLED = [f for f in FRAMEWORKS if f == "numpy" or importlib.util.find_spec(f) is not None]

#: name -> (attack factory, gradient attack?, expected verdict)
ATTACKS: dict[str, tuple[Callable[[], attacks.Attack], bool, str]] = {
    "square": (lambda: attacks.Square("linf", queries=100, image_shape=(1, 8, 8)), False, "passed"),
    "square-20-queries": (
        lambda: attacks.Square("linf", queries=20, image_shape=(1, 8, 8)),
        False,
        "failed",
    ),
    "pgd": (lambda: attacks.PGD("linf", steps=10), True, "passed"),
    "pgd-1-step": (lambda: attacks.PGD("linf", steps=1, abs_stepsize=0.02), True, "failed"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread, restored after


def frameworks_for(gradient: bool) -> list[str]:
    """Installed frameworks that can run the attack; skip unless there are two to compare."""
    usable = [f for f in INSTALLED if not (gradient and f == "numpy")]
    if len(usable) < 2:
        pytest.skip(f"needs two installed frameworks that can run it, found {usable}")
    return usable


def features_for(framework: str, model: Any) -> Any:
    """The penultimate layer: torch's default, a function of the shared weights elsewhere."""
    w1, b1, _, _ = mlp_weights()
    if framework == "torch":
        return None  # the input of the final nn.Linear, found by the engine
    if framework == "tensorflow":
        return model.layers[0]  # Dense(32, relu): the final Dense layer's input
    if framework == "jax":
        import jax.numpy as jnp

        jw, jb = jnp.asarray(w1), jnp.asarray(b1)
        return lambda x: jnp.maximum(x @ jw + jb, 0)
    return lambda x: np.maximum(x @ w1 + b1, 0).astype(x.dtype)


def run(framework: str, attack: attacks.Attack) -> Report:
    if framework == "jax":
        enable_jax_float64()
    model = native_mlp(framework)
    x, y = held_out(SAMPLES)
    return binarization_test(
        model,
        to_native(framework, x),
        y,
        attack=attack,
        epsilon=EPS,
        features=features_for(framework, model),
        n_validation=16,
        seed=SEED,
    )


class NumPyDraws(backend.RandomSource):
    """The same random numbers in every framework: drawn in NumPy, then converted.

    Seeded as :class:`~attacks.backend.RandomSource` seeds its NumPy generator,
    so a NumPy run is unchanged; other frameworks get the same values on their
    device and in the reference tensor's dtype.
    """

    def __init__(self, seed: int | None, like: ep.Tensor) -> None:
        self.framework = backend.tensor_framework(like)
        self._like = like
        self._gen = np.random.default_rng(int(np.random.SeedSequence(seed).generate_state(1)[0]))

    def _native(self, values: np.ndarray) -> ep.Tensor:
        raw = self._like.raw
        device = raw.device if self.framework == "torch" else None
        array = values.astype(np.float32)
        return backend.wrap(backend.from_numpy(self.framework, array, device)).astype(
            self._like.dtype
        )

    def uniform(self, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> ep.Tensor:
        return self._native(self._gen.uniform(low, high, shape))

    def normal(self, shape: tuple[int, ...]) -> ep.Tensor:
        return self._native(self._gen.standard_normal(shape))


def per_sample(report: Report, field: str) -> np.ndarray:
    return np.array([getattr(s, field) for s in report.samples])


@pytest.mark.parametrize("name", list(ATTACKS))
def test_same_draws_give_the_same_result_for_every_sample(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, gradient, verdict = ATTACKS[name]
    frameworks = frameworks_for(gradient)
    monkeypatch.setattr(backend, "RandomSource", NumPyDraws)
    reports = {f: run(f, make()) for f in frameworks}
    ref_name, ref = frameworks[0], reports[frameworks[0]]
    assert ref.verdict == verdict, ref.summary()
    assert ref.n_conclusive == SAMPLES
    if verdict == "failed":  # a weak attack: the pattern of misses is informative
        assert 0.2 < ref.asr < 0.8, ref.summary()
    for framework, report in reports.items():
        where = f"{framework} vs {ref_name}"
        assert report.verdict == ref.verdict, where
        assert report.asr == ref.asr, where
        for field in ("conclusive", "success", "random_success"):
            assert per_sample(report, field).tolist() == per_sample(ref, field).tolist(), (
                f"{field}: {where}"
            )
        for field in ("inner_accuracy", "boundary_accuracy"):
            np.testing.assert_array_equal(
                per_sample(report, field), per_sample(ref, field), err_msg=where
            )
        np.testing.assert_allclose(
            per_sample(report, "train_margin"), per_sample(ref, "train_margin"), rtol=MARGIN_RTOL
        )
        np.testing.assert_allclose(
            per_sample(report, "logit_difference"),
            per_sample(ref, "logit_difference"),
            atol=LOGIT_ATOL,
            err_msg=where,
        )
        np.testing.assert_allclose(
            per_sample(report, "distance"),
            per_sample(ref, "distance"),
            atol=DISTANCE_ATOL,
            err_msg=where,
        )


@pytest.mark.parametrize("name", ["square", "pgd", "identity"])
def test_own_random_streams_give_the_same_verdicts(name: str) -> None:
    gradient = name == "pgd"
    frameworks = frameworks_for(gradient)
    if name == "square":
        # Square on JAX compiles its eager ops for every active-set size: about 10 s of
        # CPU per process. JAX's Square is compared under the same draws above; here
        # its own random stream would only add compilations for new draw shapes.
        frameworks = [f for f in frameworks if f != "jax"]
    reports = {
        f: run(f, identity if name == "identity" else ATTACKS[name][0]()) for f in frameworks
    }
    expected = ("failed", 0.0) if name == "identity" else ("passed", 1.0)
    for framework, report in reports.items():
        assert (report.verdict, report.asr) == expected, f"{framework}: {report.summary()}"
        assert per_sample(report, "conclusive").all(), framework

"""Minimum-norm attacks (C&W L2, FMN, DDN) on the digits MLP.

What must hold: without epsilon they fool (nearly) every sample and every
point they return that differs from the clean one is adversarial in a fresh
forward pass; their distances are really minimal (well below a line search
along the gradient and no worse than PGD turned into a minimiser by
bisection); with epsilon they keep the ball and their robust accuracy agrees
with their own distances; targets are reached; runs reproduce; inputs are
left alone; and, where Foolbox is installed, they are no worse than its
implementations at equal steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from digits_models import held_out, native_mlp, numpy_mlp, torch_mlp
from framework_support import framework_params, to_native, to_numpy

import attacks
from attacks.base import Attack
from attacks.minimization import DDN, FMN, CarliniWagnerL2, soft_margin

#: Most tests attack the PyTorch digits MLP (the reference runs are in PyTorch).
torch = pytest.importorskip("torch", reason="the reference runs attack the PyTorch digits MLP")

GRADIENT_FRAMEWORKS = [f for f in framework_params() if f.id != "numpy"]

#: Samples and steps per framework: JAX runs eagerly op by op (slow), TF eagerly.
SIZES = {"torch": (64, 50), "tensorflow": (16, 20), "jax": (8, 10)}

ATTACK_NAMES = ["fmn-l2", "fmn-linf", "fmn-l1", "ddn", "cw"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread, restored after


def make_attack(name: str, steps: int, *, strong_cw: bool = False) -> tuple[Attack, float]:
    """An attack by name with its norm; C&W in a short configuration.

    C&W's tanh variables of pixels at exactly 0 or 1 (most of a digit) start
    saturated at |w| = 7.25, so with the default step 0.01 they barely move in
    a few hundred steps; the tests use larger steps and constants instead
    (``strong_cw``: 5 x 100 steps, which minimise as well as FMN and DDN).
    A name ending in ``-margin`` is FMN with the paper's logit difference.
    """
    if name == "cw":
        if strong_cw:
            return CarliniWagnerL2(
                binary_search_steps=5, steps=100, stepsize=0.05, initial_const=1.0
            ), 2.0
        return CarliniWagnerL2(
            binary_search_steps=2, steps=max(steps, 30), stepsize=0.1, initial_const=10.0
        ), 2.0
    if name == "ddn":
        return DDN(steps=steps), 2.0
    norm = name.split("-")[1]
    loss = "margin" if name.endswith("-margin") else "auto"  # "margin": the paper's loss
    return FMN(norm, steps=steps, loss=loss), attacks.parse_p(norm)


def _norms(x: np.ndarray, x_adv: np.ndarray, p: float) -> np.ndarray:
    d = np.abs(x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    return d.max(axis=1) if math.isinf(p) else (d**p).sum(axis=1) ** (1 / p)


def _predict(model: Any, x: np.ndarray, framework: str = "torch") -> np.ndarray:
    """Fresh forward pass of a native model, in NumPy."""
    out: np.ndarray = to_numpy(model(to_native(framework, x))).argmax(axis=1)
    return out


def _found_distances(
    model: Any, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, p: float, target: Any = None
) -> np.ndarray:
    """Distances of verified adversarials; inf where the returned point does not fool."""
    pred = _predict(model, x_adv)
    fooled = pred == target if target is not None else pred != y
    return np.where(fooled, _norms(x, x_adv, p), np.inf)


# ---------------------------------------------------------------------- fool and verify


@pytest.mark.parametrize("name", ATTACK_NAMES)
@pytest.mark.parametrize("framework", GRADIENT_FRAMEWORKS)
def test_without_epsilon_every_sample_is_fooled_and_every_claim_verified(
    framework: str, name: str
) -> None:
    n, steps = SIZES[framework]
    x, y = held_out(n)
    model = native_mlp(framework)
    attack, p = make_attack(name, steps)
    assert attack.minimizes_norm
    xn = to_native(framework, x)
    x_adv = attack(model, xn, to_native(framework, y))

    assert type(x_adv) is type(xn)
    adv = to_numpy(x_adv)
    assert adv.shape == x.shape
    assert adv.dtype == x.dtype
    assert adv.min() >= 0.0
    assert adv.max() <= 1.0
    fooled = _predict(model, adv, framework) != y
    moved = np.any(adv != x, axis=1)
    # every returned point that is not the clean one is claimed adversarial: verify it
    assert fooled[moved].all(), f"{name} returned non-adversarial points for {np.where(moved)}"
    assert fooled.mean() >= 0.95, f"{name} fooled only {fooled.mean():.2f} of the samples"
    # distances reported through attacks.distances agree with our own measurement
    d = to_numpy(attacks.distances(xn, x_adv, attack.norm))
    np.testing.assert_allclose(d, _norms(x, adv, p), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- really minimal


@functools.cache
def _pgd_bisection(norm: str, targeted: bool, high: float) -> np.ndarray:
    """Per sample, the smallest budget (10 bisection rounds) at which PGD-20 succeeds.

    PGD turned into a minimiser: 200 gradient steps per sample in all, a
    strong reference on this small MLP.
    """
    x, y = held_out(64)
    model = torch_mlp()
    target = _least_likely(x) if targeted else None
    xt, yt = to_native("torch", x), to_native("torch", y)
    tt = None if target is None else to_native("torch", target)
    lo, hi = np.zeros(64, np.float32), np.full(64, high, np.float32)
    for _ in range(10):
        mid = (lo + hi) / 2
        x_adv = to_numpy(attacks.PGD(norm, steps=20)(model, xt, yt, epsilon=mid, target=tt))
        ok = np.isfinite(_found_distances(model, x, x_adv, y, attacks.parse_p(norm), target))
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi


@functools.cache
def _gradient_line_search(norm: str, targeted: bool) -> np.ndarray:
    """Per sample, the shortest point on the clean gradient's ray that fools (fine grid).

    The ray is clipping-aware (each point has exactly the grid norm after
    clipping); for Linf it is the FGSM ray. One gradient, no iteration: what
    an attack that does not really minimise would find.
    """
    import eagerpy as ep

    from attacks import backend
    from attacks.gradient import loss_and_logits
    from attacks.losses import margin

    x, y = held_out(64)
    model = torch_mlp()
    target = _least_likely(x) if targeted else None
    p = attacks.parse_p(norm)
    xe, ye = ep.astensor(to_native("torch", x)), ep.astensor(to_native("torch", y))
    te = None if target is None else ep.astensor(to_native("torch", target))
    _, _, grad = backend.value_and_grad(loss_and_logits(attacks.Model(model), margin, ye, te), xe)
    g = to_numpy(grad.raw)
    grid = np.geomspace(0.002, 1.0, 300) if math.isinf(p) else np.geomspace(0.02, 8.0, 300)
    xs, gs = np.tile(x, (len(grid), 1)), np.tile(g, (len(grid), 1))
    radii = np.repeat(grid, len(x)).astype(np.float32)
    if math.isinf(p):
        points = np.clip(xs + radii[:, None] * np.sign(gs), 0, 1)
    else:
        points = np.asarray(attacks.rescale_and_clip(xs, gs, radii, p=p, bounds=(0, 1)))
    pred = _predict(model, points.astype(np.float32)).reshape(len(grid), len(x))
    fooled = pred == target if target is not None else pred != y
    return np.where(fooled.any(axis=0), grid[fooled.argmax(axis=0)], np.inf)


def _least_likely(x: np.ndarray) -> np.ndarray:
    """The class the MLP finds least likely: a far target, where the boundary is curved."""
    out: np.ndarray = to_numpy(torch_mlp()(to_native("torch", x))).argmin(axis=1)
    return out


#: Weaknesses the tests below measure on the digits MLP (NumPy-trained, seed 0), marked
#: strict xfail so they stay visible and an improvement shows up as XPASS (then drop the
#: entry). Closed so far: untargeted FMN-L2 (median 0.458 -> 0.400 vs PGD bisection 0.413)
#: and C&W (0.468 -> 0.414), both by following the soft margin and (C&W) warm starts;
#: FMN-L1 with a budget (missed samples its unbounded run fools at 0.46-0.89 eps), by
#: letting the budget stop FMN's run but not bound its radius.
KNOWN_GAPS: dict[tuple[Any, ...], str] = {}


def _known_gap(request: pytest.FixtureRequest, *key: Any) -> None:
    if key in KNOWN_GAPS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[key]))


@pytest.mark.parametrize("name", ATTACK_NAMES)
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "least-likely"])
def test_distances_are_really_minimal(
    name: str, targeted: bool, request: pytest.FixtureRequest
) -> None:
    """Median distance: no worse than PGD + bisection, well below a gradient line search.

    On this small MLP the boundary near most digits is almost flat, so untargeted,
    even the line search lands within 13% of PGD bisection (L2 medians 0.465 vs
    0.413; DDN 0.402, FMN 0.400, C&W 0.414): only the far, least-likely target
    separates minimisers from it clearly (L2: line search 1.78, FMN 1.092, DDN
    1.093, C&W 1.086, PGD bisection 1.107). 5% covers the measured spread among
    good minimisers (FMN-Linf 0.99x PGD targeted, FMN-L2 0.97x untargeted).
    Untargeted, a minimiser that follows the logit difference lands near the
    line search (FMN-L2 0.458, C&W 0.468): it keeps to the boundary with the
    clean point's runner-up class where another class's is nearer.
    """
    _known_gap(request, "minimal", name, targeted)
    x, y = held_out(64)
    model = torch_mlp()
    attack, p = make_attack(name, 50, strong_cw=True)
    target = _least_likely(x) if targeted else None
    tt = None if target is None else to_native("torch", target)
    x_adv = to_numpy(attack(model, to_native("torch", x), to_native("torch", y), target=tt))
    ours = np.median(_found_distances(model, x, x_adv, y, p, target))
    norm = attacks.norm_name(p)
    high = {"l2": 6.0, "linf": 0.6, "l1": 20.0}[norm]
    pgd = np.median(_pgd_bisection(norm, targeted, high))
    assert ours <= 1.05 * pgd, f"{name}: median {ours:.4f} vs PGD bisection {pgd:.4f}"
    if targeted and norm != "l1":  # the line search is for the L2 and Linf rays only
        line = np.median(_gradient_line_search(norm, targeted))
        assert ours < 0.8 * line, f"{name}: median {ours:.4f} vs gradient line search {line:.4f}"


# ---------------------------------------------------------------------- with epsilon


@functools.cache
def _unbounded(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returned points and verified distances of the run without epsilon (torch, 64)."""
    x, y = held_out(64)
    model = torch_mlp()
    attack, p = make_attack(name, 50)
    x_adv = to_numpy(attack(model, to_native("torch", x), to_native("torch", y)))
    return x_adv, _found_distances(model, x, x_adv, y, p)


@pytest.mark.parametrize("name", [*ATTACK_NAMES, "fmn-l1-margin"])
def test_with_epsilon_the_ball_is_kept_and_robust_accuracy_agrees(
    name: str, request: pytest.FixtureRequest
) -> None:
    """Robust accuracy at eps <= 1 - P(distance <= eps) of the unbounded run (DDN + 2/64).

    DDN with a budget never lets its radius exceed it, so it follows another
    trajectory than without one; a sample whose distance lies within a few
    percent of eps can then land on either side (measured: at most 2 of 64 at
    20 steps, 1 of 64 at 50, and as often in our favour). C&W and FMN run the
    same computation with and without eps (FMN only stops earlier), so they
    must agree exactly. ``fmn-l1-margin`` (the paper's loss) is the case that
    failed while FMN's radius was bounded by the budget: at eps = 1.33, 22
    robust where its distances allow 19 (4 samples missed at 0.46-0.89 eps).
    """
    _known_gap(request, "epsilon", name, None)
    x, y = held_out(64)
    model = torch_mlp()
    attack, p = make_attack(name, 50)
    _, d = _unbounded(name)
    finite = np.sort(d[np.isfinite(d) & (d > 0)])
    tolerance = 2 if name == "ddn" else 0
    xt, yt = to_native("torch", x), to_native("torch", y)
    for q in (0.3, 0.7):
        k = int(q * len(finite))
        eps = float(np.sqrt(finite[k - 1] * finite[k]))  # between two distances, not on one
        x_adv = to_numpy(attack(model, xt, yt, epsilon=eps))
        assert _norms(x, x_adv, p).max() <= eps * (1 + 1e-6)
        assert x_adv.min() >= 0.0
        assert x_adv.max() <= 1.0
        robust = int((_predict(model, x_adv) == y).sum())
        bound = int((d > eps).sum())
        assert robust <= bound + tolerance, f"{name} at eps={eps:.4f}: {robust} > {bound}"
    # one epsilon per sample is accepted and means the same as the scalar
    per_sample = np.full(64, eps, np.float32)
    np.testing.assert_array_equal(
        to_numpy(attack(model, xt, yt, epsilon=per_sample)),
        to_numpy(attack(model, xt, yt, epsilon=eps)),
    )


class _CountingModel:
    """A torch model that counts its forward passes (to see early exits)."""

    def __init__(self) -> None:
        self.net = torch_mlp()
        self.calls = 0

    def __call__(self, x: Any) -> Any:
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("name", ["fmn-l2", "fmn-linf", "ddn"])
def test_with_a_generous_epsilon_fmn_and_ddn_stop_early(name: str) -> None:
    x, y = held_out(32)
    attack, p = make_attack(name, 100)
    eps = 0.5 if math.isinf(p) else 4.0  # far beyond every sample's distance
    counting = _CountingModel()
    model = attacks.Model(counting, framework="torch")
    xt, yt = to_native("torch", x), to_native("torch", y)
    x_adv = to_numpy(attack(model, xt, yt, epsilon=eps))
    assert (_predict(counting.net, x_adv) != y).all()
    assert counting.calls <= 30, f"{name} did not stop early: {counting.calls} forward passes"
    counting.calls = 0
    attack(model, xt, yt)
    assert counting.calls == 101  # without epsilon: every step, then the last iterate


def test_cw_abort_early_saves_steps_and_keeps_results_valid() -> None:
    x, y = held_out(32)
    counting = _CountingModel()
    model = attacks.Model(counting, framework="torch")
    xt, yt = to_native("torch", x), to_native("torch", y)
    kwargs: dict[str, Any] = {"binary_search_steps": 3, "steps": 100, "stepsize": 0.05}
    patient = to_numpy(CarliniWagnerL2(abort_early=False, **kwargs)(model, xt, yt))
    full = counting.calls
    counting.calls = 0
    hasty = to_numpy(CarliniWagnerL2(abort_early=True, **kwargs)(model, xt, yt))
    assert full == 300
    assert counting.calls < full
    for x_adv in (patient, hasty):
        moved = np.any(x_adv != x, axis=1)
        assert (_predict(counting.net, x_adv)[moved] != y[moved]).all()


# ---------------------------------------------------------------------- targeted


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_targeted_attacks_reach_the_target(name: str) -> None:
    x, y = held_out(32)
    target = (y + 1) % 10
    model = torch_mlp()
    attack, _ = make_attack(name, 50, strong_cw=True)
    x_adv = to_numpy(
        attack(
            model,
            to_native("torch", x),
            to_native("torch", y),
            target=to_native("torch", target),
        )
    )
    pred = _predict(model, x_adv)
    moved = np.any(x_adv != x, axis=1)
    assert (pred[moved] == target[moved]).all()
    assert (pred == target).mean() >= 0.95, f"{name} reached the target for {(pred == target)}"


# ---------------------------------------------------------------------- reproducible, pure


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_runs_reproduce_and_inputs_are_not_mutated(name: str) -> None:
    x, y = held_out(16)
    model = torch_mlp()
    attack, _ = make_attack(name, 20)
    xt, yt = to_native("torch", x), to_native("torch", y)
    first = to_numpy(attack(model, xt, yt))
    second = to_numpy(attack(model, xt, yt))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(to_numpy(xt), x)
    np.testing.assert_array_equal(to_numpy(yt), y)
    x_copy = x.copy()
    attack(model, x, y)  # NumPy input to a torch model
    np.testing.assert_array_equal(x, x_copy)


def _flat_then_linear_model() -> Callable[[Any], Any]:
    """Zero gradient at every digit: class 1 wins only once the pixel sum grows by 1.

    DDN must then step in random directions, drawn from the attack's seed.
    """
    threshold = float(held_out(16)[0].sum(axis=1).max()) + 1.0

    def model(x: Any) -> Any:
        score = 10 * torch.relu(x.sum(dim=1) - threshold) - 1e-3
        return torch.stack([torch.zeros_like(score), score], dim=1)

    return model


def test_ddn_draws_its_random_directions_from_the_seed() -> None:
    x, _ = held_out(16)
    y = np.zeros(16, np.int64)
    model = attacks.Model(_flat_then_linear_model(), framework="torch")
    xt, yt = to_native("torch", x), to_native("torch", y)
    a = to_numpy(DDN(steps=30, seed=1)(model, xt, yt))
    b = to_numpy(DDN(steps=30, seed=1)(model, xt, yt))
    c = to_numpy(DDN(steps=30, seed=2)(model, xt, yt))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != x), "no random step ever fooled the model: the test proves nothing"
    assert np.any(a != c)


# ---------------------------------------------------------------------- soft margin


def test_the_soft_margin_bounds_the_margin_and_points_like_cross_entropy() -> None:
    """What FMN and C&W rely on: the sign of the margin decides, the direction is CE's.

    Two classes: it is the margin. More: above the margin untargeted, below it
    targeted (so targeted success of the soft margin implies success), and its
    input gradient is cross-entropy's up to a positive factor per sample.
    """
    import eagerpy as ep

    from attacks import backend
    from attacks.gradient import loss_and_logits
    from attacks.losses import cross_entropy, margin

    rng = np.random.default_rng(0)
    y = ep.astensor(torch.from_numpy(rng.integers(0, 10, 32)))
    t = ep.astensor(torch.from_numpy(rng.integers(0, 10, 32)))
    two = ep.astensor(torch.from_numpy(rng.normal(size=(32, 2)) * 5))
    y2, t2 = y % 2, t % 2
    for target in (None, t2):
        np.testing.assert_allclose(
            soft_margin(two, y2, target).numpy(), margin(two, y2, target).numpy(), atol=1e-9
        )
    many = ep.astensor(torch.from_numpy(rng.normal(size=(32, 10)) * 5))
    assert (soft_margin(many, y).numpy() >= margin(many, y).numpy()).all()
    assert (soft_margin(many, y, t).numpy() <= margin(many, y, t).numpy()).all()
    # huge logits: no overflow, the margin in the limit
    np.testing.assert_allclose(soft_margin(many * 1e4, y).numpy(), margin(many * 1e4, y).numpy())

    x, labels = held_out(16)
    model = attacks.Model(torch_mlp())
    xe, ye = ep.astensor(to_native("torch", x)), ep.astensor(to_native("torch", labels))
    for target in (None, (ye + 3) % 10):
        _, _, g_soft = backend.value_and_grad(loss_and_logits(model, soft_margin, ye, target), xe)
        _, _, g_ce = backend.value_and_grad(loss_and_logits(model, cross_entropy, ye, target), xe)
        a, b = to_numpy(g_soft.raw), to_numpy(g_ce.raw)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        np.testing.assert_allclose(cosine, 1.0, atol=1e-4)
        assert (np.linalg.norm(a, axis=1) >= np.linalg.norm(b, axis=1) * (1 - 1e-5)).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda loss: FMN("l2", steps=10, loss=loss),
        lambda loss: CarliniWagnerL2(
            binary_search_steps=2, steps=10, stepsize=0.1, initial_const=10.0, loss=loss
        ),
    ],
    ids=["fmn", "cw"],
)
def test_the_default_loss_is_the_soft_margin_untargeted_and_the_margin_targeted(
    make: Callable[[str], Attack],
) -> None:
    x, y = held_out(16)
    model = torch_mlp()
    xt, yt = to_native("torch", x), to_native("torch", y)
    tt = to_native("torch", _least_likely(x)[:16])
    for target, same, other in ((None, "soft-margin", "margin"), (tt, "margin", "soft-margin")):
        auto = to_numpy(make("auto")(model, xt, yt, target=target))
        np.testing.assert_array_equal(auto, to_numpy(make(same)(model, xt, yt, target=target)))
        assert np.any(auto != to_numpy(make(other)(model, xt, yt, target=target)))


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_a_numpy_model_gets_the_needs_gradients_error(name: str) -> None:
    x, y = held_out(4)
    attack, _ = make_attack(name, 5)
    with pytest.raises(TypeError, match="needs gradients"):
        attack(numpy_mlp(), x, y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FMN("l3"),
        lambda: FMN(steps=0),
        lambda: FMN(gamma_init=1.5),
        lambda: FMN(alpha_init=-1.0),
        lambda: FMN(loss="ce"),
        lambda: DDN(steps=0),
        lambda: DDN(gamma=0.0),
        lambda: DDN(init_epsilon=0.0),
        lambda: CarliniWagnerL2(steps=0),
        lambda: CarliniWagnerL2(confidence=-1.0),
        lambda: CarliniWagnerL2(initial_const=0.0),
        lambda: CarliniWagnerL2(loss="dlr"),
    ],
)
def test_bad_arguments_are_rejected(make: Callable[[], Attack]) -> None:
    with pytest.raises(ValueError, match=r"must|need|supports"):
        make()


def test_the_norm_is_set_per_attack() -> None:
    assert FMN("linf").p == math.inf
    assert FMN("l1").p == 1.0
    assert FMN().p == 2.0
    assert DDN().p == 2.0
    assert CarliniWagnerL2().p == 2.0


# ---------------------------------------------------------------------- vs Foolbox


@pytest.mark.parametrize("name", ["ddn", "fmn-l2", "fmn-linf", "fmn-l1", "cw"])
def test_no_worse_than_foolbox_at_equal_steps(name: str) -> None:
    """Median distances (inf where not fooled) within 5% of Foolbox 3.3.4's.

    Measured (64 digits, 50 steps; C&W 5 x 100): DDN 0.4020 vs 0.4020 (the
    same algorithm), FMN-L2 0.4001 vs 0.8695 (Foolbox's L2 projection is a
    no-op: ``factor = min(1, norms / norms)``), FMN-Linf 0.0813 vs 0.0868,
    FMN-L1 0.8044 vs 1.0875 (Foolbox fools 45 of 64), C&W 0.4143 vs 0.4683.
    With the papers' logit difference (``loss="margin"``) and, for C&W, no
    warm start, FMN-Linf and C&W follow Foolbox's trajectories (0.0868, 0.4683).
    """
    fb = pytest.importorskip("foolbox")
    x, y = held_out(64)
    attack, p = make_attack(name, 50, strong_cw=True)
    theirs_attack = {
        "ddn": lambda: fb.attacks.DDNAttack(steps=50),
        "fmn-l2": lambda: fb.attacks.L2FMNAttack(steps=50),
        "fmn-linf": lambda: fb.attacks.LInfFMNAttack(steps=50),
        "fmn-l1": lambda: fb.attacks.L1FMNAttack(steps=50),
        "cw": lambda: fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=5, steps=100, stepsize=0.05, initial_const=1.0
        ),
    }[name]()
    model = torch_mlp()
    xt, yt = to_native("torch", x), to_native("torch", y)
    ours = np.median(_found_distances(model, x, to_numpy(attack(model, xt, yt)), y, p))
    fmodel = fb.PyTorchModel(torch_mlp(), bounds=(0, 1))  # fresh: Foolbox leaks gradients
    x_fb, _, _ = theirs_attack(fmodel, xt, yt, epsilons=None)
    theirs = np.median(_found_distances(model, x, to_numpy(x_fb), y, p))
    assert ours <= 1.05 * theirs, f"{name}: ours {ours:.4f}, Foolbox {theirs:.4f}"

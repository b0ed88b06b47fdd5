"""Our PGD is at least as strong as Foolbox 3's PGD at the same settings.

Why: defenses report robust accuracy under PGD, and a reviewer compares with
the implementation they know. If ``attacks.PGD`` left more points robust than
Foolbox's ``LinfPGD`` / ``L2PGD`` with the same budget, steps, absolute step
size and random start, the binarization test would certify a weaker attack
than the one users trust. Both run on the digits MLP (trained in-process) on
the 200 digits held out from its training; budgets are chosen where robust
accuracy is mid-range, so a weaker attack shows. Random starts differ between
the libraries, so each side runs three seeds and the means are compared, with
one point (two samples of 200) of tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from digits_models import accuracy, held_out, native_mlp

import attacks

SAMPLES = 200
SEEDS = (0, 1, 2)
TOLERANCE = 0.01  # one percentage point


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize(
    ("norm", "foolbox_attack", "eps", "steps"),
    [("linf", "LinfPGD", 0.08, 20), ("l2", "L2PGD", 0.5, 20)],
)
def test_pgd_is_at_least_as_strong_as_foolbox(
    norm: str, foolbox_attack: str, eps: float, steps: int
) -> None:
    torch = pytest.importorskip("torch")
    fb = pytest.importorskip("foolbox")
    model = native_mlp("torch")
    x_np, y_np = held_out(SAMPLES)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    stepsize = 2.5 * eps / steps

    ours, theirs = [], []
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
    for seed in SEEDS:
        pgd = attacks.PGD(norm, steps=steps, abs_stepsize=stepsize, random_start=True, seed=seed)
        ours.append(accuracy(model, pgd(model, x, y, epsilon=eps), y_np))
        torch.manual_seed(seed)
        attack = getattr(fb.attacks, foolbox_attack)(
            steps=steps, abs_stepsize=stepsize, random_start=True
        )
        _, clipped, _ = attack(fmodel, x, y, epsilons=eps)
        theirs.append(accuracy(model, clipped, y_np))

    clean = accuracy(model, x, y_np)
    report = f"clean {clean:.3f}, ours {ours}, foolbox {theirs}"
    assert float(np.mean(theirs)) < clean - 0.3, report  # the setting is one where attacks bite
    assert float(np.mean(ours)) <= float(np.mean(theirs)) + TOLERANCE, report
    print(report)

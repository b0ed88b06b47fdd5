"""The undefended baseline: a plain MLP, where gradients tell the truth.

Its failing attack is no attack (a random point of the ball); PGD passes. Any
attack that fails here is broken, whatever the defense.
"""

from __future__ import annotations

import attacks
from pytest_attacktest.zoo.attack_tools import RandomNoise
from pytest_attacktest.zoo.base import MLP, AttackSpec, Defense
from pytest_attacktest.zoo.training import fit_mlp

DEFENSE = Defense(
    name="plain",
    title="undefended MLP (baseline)",
    description=(
        "A 64-64-10 ReLU MLP, no defense. Gradients are informative, so plain PGD finds "
        "the guaranteed adversarial; a random point of the ball almost never does (the "
        "adversarial region of the binarization test is small)."
    ),
    references=(
        "Madry, Makelov, Schmidt, Tsipras and Vladu, Towards Deep Learning Models "
        "Resistant to Adversarial Attacks, ICLR 2018 (PGD).",
    ),
    epsilon=0.1,
    weak=AttackSpec(
        name="random noise",
        description="One uniform random point of the Linf ball: not an attack.",
        attack=lambda model: RandomNoise(),
    ),
    adaptive=AttackSpec(
        name="PGD-20 (CE)",
        description="Plain PGD suffices on a model without obfuscation.",
        attack=lambda model: attacks.PGD("linf", steps=20),
    ),
    build=MLP,
    train=lambda model: fit_mlp(model, epochs=300),  # type: ignore[arg-type]
    version=2,
)

"""Framework-agnostic adversarial attacks on EagerPy.

This package knows nothing of pytest: it is the attack library that
``pytest_attacktest`` runs, usable on its own. Tensors go in and come out in
the caller's framework (NumPy, PyTorch, TensorFlow, JAX).
"""

from attacks import losses, progress
from attacks.adaptive import BPDA, EOT
from attacks.apgd import APGD
from attacks.base import Attack, distances
from attacks.ensemble import Ensemble
from attacks.external import FromAutoAttack, FromFoolbox, FromFunction, FromTorchattacks
from attacks.gradient import FGSM, PGD
from attacks.hopskipjump import HopSkipJump
from attacks.minimization import DDN, FMN, CarliniWagnerL2
from attacks.models import Bounds, Model
from attacks.norms import norm_name, parse_p
from attacks.rescaling import clipping_aware_rescaling, rescale_and_clip
from attacks.square import Square

__all__ = [
    "APGD",
    "BPDA",
    "DDN",
    "EOT",
    "FGSM",
    "FMN",
    "PGD",
    "Attack",
    "Bounds",
    "CarliniWagnerL2",
    "Ensemble",
    "FromAutoAttack",
    "FromFoolbox",
    "FromFunction",
    "FromTorchattacks",
    "HopSkipJump",
    "Model",
    "Square",
    "clipping_aware_rescaling",
    "distances",
    "losses",
    "norm_name",
    "parse_p",
    "progress",
    "rescale_and_clip",
]

__version__ = "0.1.0"

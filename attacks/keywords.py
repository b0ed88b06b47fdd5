"""Unknown keyword arguments answered with the keyword that was meant.

Why: other libraries spell the budget ``eps`` (torchattacks) or ``epsilons``
(Foolbox), and Python's own ``TypeError: got an unexpected keyword argument
'eps'`` says nothing about what to write instead. A function wrapped in
:func:`keyword_hints` checks its keyword arguments against its signature
before it runs and names the closest accepted keyword, or says where the
budget goes when the function takes none (an attack's constructor: epsilon
is given per call).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["EPSILON_SPELLINGS", "keyword_hints"]

#: Other libraries' names of the budget.
EPSILON_SPELLINGS = frozenset({"eps", "epsilons", "radius", "budget"})

#: Where the budget goes when the function has no ``epsilon`` (an attack's constructor).
_NO_EPSILON_HERE = (
    " (the budget is not set when the attack is built: pass it to the call, "
    "attack(model, x, y, epsilon=...))"
)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _hint(name: str, accepted: list[str]) -> str:
    if name.lower() in EPSILON_SPELLINGS or name.lower().startswith("epsilon"):
        return " (did you mean 'epsilon'?)" if "epsilon" in accepted else _NO_EPSILON_HERE
    close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def keyword_hints(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn``, refusing unknown keyword arguments with a hint (see the module's docstring).

    The signature is read once, here; a function that takes ``**kwargs`` is
    returned unchanged (it accepts every keyword).
    """
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return fn
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in parameters if p.kind in keywords]
    known = frozenset(accepted)
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", "the function"))

    @functools.wraps(fn)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        unknown = [key for key in kwargs if key not in known]
        if unknown:
            listed = ", ".join(f"{key!r}{_hint(key, accepted)}" for key in unknown)
            raise TypeError(f"{name}() got unexpected keyword argument(s) {listed}")
        return fn(*args, **kwargs)

    return checked

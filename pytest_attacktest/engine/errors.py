"""The base class of the errors that tell a user what to change: :class:`AttackTestError`.

Why a common base: an attack test that cannot start because of its settings
(no epsilon, a feature layer that is not there, a third-party attack object
passed where our adapter is needed) has a message that says everything; a
traceback through the engine only hides it. The plugin shows these errors as
one line and records their message in every report, while any other
exception (a bug, ours or in the user's model or attack) keeps its traceback.
Each subclass also derives from the builtin type callers catch
(``ValueError``, ``TypeError``), so ``except ValueError`` keeps working.
Importing this module imports nothing else.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["AttackError", "AttackTestError", "FewerSamplesWarning", "InputError", "did_you_mean"]


class AttackTestError(Exception):
    """An error in how an attack test was set up, with a message that says what to change."""


class AttackError(AttackTestError, TypeError):
    """The ``attack`` argument cannot be run (an object of another library, a class, ...)."""


class InputError(AttackTestError, ValueError):
    """The model, the inputs or the labels cannot be tested as given (shape, range, values)."""


class FewerSamplesWarning(UserWarning):
    """An attack test got fewer inputs than its ``samples`` asks for, and ran on those."""


#: Misspellings of our keywords that difflib does not find (too short, or another word).
_ALIASES = {"eps": "epsilon", "epsilons": "epsilon", "radius": "epsilon", "budget": "epsilon"}


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """``" (did you mean 'epsilon'?)"`` for a keyword close to an allowed one, else ``""``."""
    choices = list(allowed)
    alias = _ALIASES.get(name.lower())
    if alias in choices:
        return f" (did you mean {alias!r}?)"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""

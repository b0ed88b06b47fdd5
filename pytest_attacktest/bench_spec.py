"""The grammar of ``--attack-bench SPEC``: which attacks to run on the defense zoo.

Why its own module: the spec is parsed in ``pytest_configure``, so a typo is a
usage error before anything is collected or trained, and the rules can be
tested without a pytest run. The grammar is deliberately small and never
evaluates code: keyword values are Python *literals* (``ast.literal_eval``).

SPEC is a comma-separated list of entries (commas inside parentheses belong
to the entry)::

    PGD                      an attack class of the ``attacks`` package
    PGD(steps=50, loss='margin')   the same with keyword arguments (literals only)
    adaptive                 each defense's documented adaptive attack
    weak                     each defense's documented attack that fails on it
    pkg.module:name          the user's own: an attacks.Attack instance or class,
                             a factory returning one, or fn(model, x, y, epsilon)
    pkg.module:make(k=1)     a class or factory, called with keyword arguments

Importing this module imports no ML framework; resolving entries imports
``attacks`` (EagerPy, NumPy) and the user's module.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUILTIN_ENTRIES", "BenchEntry", "BenchSpecError", "parse_bench_spec"]

#: Entries that stand for each defense's own documented attack.
BUILTIN_ENTRIES = ("adaptive", "weak")

_ENTRY = re.compile(
    r"(?P<target>[A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?)\s*(?:\((?P<args>.*)\))?", re.DOTALL
)


class BenchSpecError(ValueError):
    """``--attack-bench`` names no attack it can run; the message says what to write."""


@dataclass(frozen=True)
class BenchEntry:
    """One column of the benchmark: an attack, built afresh for each defense.

    Attributes:
        label: the entry as written (normalised spacing): the table's column
            and the generated test's id, ``zoo-defense[label]``.
        kind: ``"adaptive"`` or ``"weak"`` (the defense's own ``AttackSpec``),
            ``"library"`` (a class of ``attacks``) or ``"import"`` (the user's).
        target: the class name or import path.
        kwargs: keyword arguments of the class or factory.
    """

    label: str
    kind: str
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, defense: Any) -> Any:
        """What ``Defense.run`` takes for this entry on ``defense``: an attack or an AttackSpec."""
        if self.kind == "adaptive":
            return defense.adaptive
        if self.kind == "weak":
            return defense.weak
        return _resolve(self)()


def parse_bench_spec(text: str) -> list[BenchEntry]:
    """Parse and check SPEC; every attack is built once here so that bad arguments show now.

    Raises:
        BenchSpecError: naming the bad entry and what is accepted.
    """
    entries: list[BenchEntry] = []
    for raw in _split(text):
        entry = _parse_entry(raw)
        if entry.label in {e.label for e in entries}:
            raise BenchSpecError(f"entry {entry.label!r} is given twice")
        if entry.kind not in BUILTIN_ENTRIES:
            _check_built(entry, _resolve(entry)())
        entries.append(entry)
    if not entries:
        raise BenchSpecError(f"names no attack; {_USAGE}")
    return entries


_USAGE = (
    "expected comma-separated attacks such as 'PGD,APGD(loss=\"margin\"),adaptive': classes of "
    "the attacks package with literal keyword arguments, 'adaptive' or 'weak' (each zoo "
    "defense's documented attacks), or an import path 'pkg.module:name' to your own attack"
)


def _split(text: str) -> list[str]:
    """Split at commas outside parentheses and brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                raise BenchSpecError(f"unbalanced ')' in {text!r}; {_USAGE}")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise BenchSpecError(f"unbalanced '(' in {text!r}; {_USAGE}")
    parts.append("".join(current).strip())
    if any(not part for part in parts) and text.strip():
        raise BenchSpecError(f"empty entry in {text!r}; {_USAGE}")
    return [part for part in parts if part]


def _parse_entry(raw: str) -> BenchEntry:
    match = _ENTRY.fullmatch(raw)
    if match is None:
        raise BenchSpecError(f"cannot read entry {raw!r}; {_USAGE}")
    target, args = match["target"], match["args"]
    kwargs = _kwargs(raw, args) if args is not None else {}
    label = target if args is None else f"{target}({args.strip()})"
    if target in BUILTIN_ENTRIES:
        if args is not None:
            raise BenchSpecError(f"{target!r} takes no arguments (got {raw!r})")
        return BenchEntry(label, target, target)
    kind = "import" if ":" in target else "library"
    return BenchEntry(label, kind, target, kwargs)


def _kwargs(raw: str, args: str) -> dict[str, Any]:
    """Keyword arguments of an entry: names and Python literals only, never code."""
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except SyntaxError:
        raise BenchSpecError(f"cannot read the arguments of {raw!r}; {_USAGE}") from None
    assert isinstance(call, ast.Call)
    if call.args or any(k.arg is None for k in call.keywords):
        raise BenchSpecError(f"{raw!r}: give arguments as keywords, e.g. PGD(steps=50)")
    kwargs: dict[str, Any] = {}
    for keyword in call.keywords:
        try:
            kwargs[str(keyword.arg)] = ast.literal_eval(keyword.value)
        except ValueError:
            raise BenchSpecError(
                f"{raw!r}: the value of {keyword.arg} must be a literal (number, string, "
                "tuple, None, True/False), not an expression"
            ) from None
    return kwargs


def _library_names() -> list[str]:
    import attacks
    from attacks.base import Attack

    return sorted(
        name
        for name in attacks.__all__
        if inspect.isclass(getattr(attacks, name))
        and issubclass(getattr(attacks, name), Attack)
        and getattr(attacks, name) is not Attack
    )


def _resolve(entry: BenchEntry) -> Callable[[], Any]:
    """A function that builds a fresh attack for ``entry`` (each defense gets its own)."""
    if entry.kind == "library":
        import attacks
        from attacks.base import Attack

        cls = getattr(attacks, entry.target, None)
        if not (inspect.isclass(cls) and issubclass(cls, Attack)) or cls is Attack:
            raise BenchSpecError(
                f"{entry.target!r} is no attack of the attacks package; known: "
                f"{', '.join(_library_names())}; or write 'adaptive', 'weak' or an import "
                "path 'pkg.module:name'"
            )
        return _factory(entry, cls)
    return _factory(entry, _import(entry.target))


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise BenchSpecError(
            f"cannot import {module_name!r} for {target!r} ({exc}); the module must be "
            "importable (installed, or on sys.path, e.g. through the pythonpath ini option)"
        ) from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise BenchSpecError(f"{module_name!r} has no attribute {attribute!r} ({target!r})")
        obj = getattr(obj, part)
    return obj


def _factory(entry: BenchEntry, obj: Any) -> Callable[[], Any]:
    from attacks.base import Attack

    kwargs = entry.kwargs
    if isinstance(obj, Attack):
        if kwargs:
            raise BenchSpecError(f"{entry.target!r} is an attack instance: it takes no arguments")
        return lambda: obj
    if inspect.isclass(obj) and issubclass(obj, Attack):
        return lambda: _call(entry, obj, kwargs)
    if not callable(obj):
        raise BenchSpecError(
            f"{entry.target!r} is a {type(obj).__name__}: expected an attacks.Attack, a "
            "factory returning one, or a function fn(model, x, y, epsilon)"
        )
    signature = _signature(obj)
    if not kwargs and signature is not None and _binds(signature, 1, 2, 3, 4):
        return lambda: obj  # the user's attack function itself
    return lambda: _call(entry, obj, kwargs)


def _signature(obj: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _binds(signature: inspect.Signature, *args: Any) -> bool:
    try:
        signature.bind(*args)
    except TypeError:
        return False
    return True


def _call(entry: BenchEntry, factory: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise BenchSpecError(f"cannot build {entry.label!r}: {exc}") from None


def _check_built(entry: BenchEntry, attack: Any) -> None:
    from attacks.base import Attack

    if isinstance(attack, Attack):
        if attack.norm != "linf":
            raise BenchSpecError(
                f"{entry.label!r} attacks the {attack.norm} norm; every zoo defense is "
                "specified in linf: pass norm='linf' or use another attack"
            )
        return
    if not callable(attack):
        raise BenchSpecError(
            f"{entry.label!r} built a {type(attack).__name__}: expected an attacks.Attack "
            "or a function fn(model, x, y, epsilon)"
        )

"""Declaring a config group's keys once: types, choices, ranges and list shapes.

A group's schema is a dataclass (or, for a plugin entry built by a function, its keyword
signature): each field's annotation gives the type, ``typing.Annotated`` metadata made with
:func:`spec` gives choices, a range, a list length and a one-line description, and the field's
default is the default. :func:`check_params` checks a mapping of config values against it and
raises one :class:`~fedsim.errors.ConfigError` line naming the key, the value and what is allowed;
:func:`describe` prints the allowed values for the README tables.

Example::

    @dataclass(kw_only=True)
    class Learner:
        optimizer: Annotated[str, spec(choices=("sgd", "adam"))] = "sgd"
        lr: Annotated[float, spec(low=0, low_open=True)] = 0.05
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from fedsim.errors import ConfigError, invalid


@dataclass(frozen=True)
class Spec:
    """What a key allows beyond its type (see :func:`spec`)."""

    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    length: int | None = None
    doc: str = ""
    allowed: str = ""


def spec(
    *,
    choices: Sequence[Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    length: int | None = None,
    doc: str = "",
    allowed: str = "",
) -> Spec:
    """Metadata for ``Annotated[type, spec(...)]``.

    Parameters
    ----------
    choices
        The values allowed (names of an enum-like option).
    low, high
        Bounds of a number (or of each item of a list of numbers); ``None``: unbounded.
    low_open, high_open
        Whether the bound itself is excluded.
    length
        The exact length of a list (``2``: a pair).
    doc
        A one-line description (README tables).
    allowed
        Words for what is allowed, where the type and range say too little (a key that a
        dedicated check refines, e.g. ``clients_per_round``).
    """
    return Spec(
        None if choices is None else tuple(choices),
        low,
        high,
        low_open,
        high_open,
        length,
        doc,
        allowed,
    )


@dataclass(frozen=True)
class Key:
    """One declared key of a group."""

    name: str
    type: Any
    spec: Spec
    default: Any
    required: bool


def _split(tp: Any) -> tuple[Any, Spec]:
    """The bare type and the :class:`Spec` of an annotation (an empty one when there is none)."""
    found = Spec()
    if typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp = args[0]
        for meta in args[1:]:
            if isinstance(meta, Spec):
                found = meta
    return tp, found


def _hints(obj: Any) -> dict[str, Any]:
    """Resolved annotations of a class or function (unresolvable ones are ``Any``)."""
    target = (
        obj.__init__  # type: ignore[misc]
        if isinstance(obj, type) and not dataclasses.is_dataclass(obj)
        else obj
    )
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # a name only imported under TYPE_CHECKING: check that key's type loosely
        out: dict[str, Any] = {}
        module = sys.modules.get(getattr(obj, "__module__", ""), None)
        glb = vars(module) if module is not None else {}
        for klass in reversed(getattr(obj, "__mro__", [obj])):
            for name, ann in getattr(klass, "__annotations__", {}).items():
                try:
                    out[name] = eval(ann, glb) if isinstance(ann, str) else ann  # noqa: S307
                except Exception:
                    out[name] = Any
        return out


def _inherited_spec(cls: type, name: str, tp: Any) -> Spec:
    for base in cls.__mro__[1:]:
        if name in getattr(base, "__annotations__", {}):
            btp, bsp = _split(_hints(base).get(name, Any))
            if bsp != Spec() and btp == tp:
                return bsp
    return Spec()


def keys_of(obj: Any) -> list[Key]:
    """The declared keys of a dataclass, a class (its ``__init__``) or a function.

    Dataclass fields with ``init=False`` and the ``self``/``*args``/``**kwargs`` parameters are
    not keys; where a signature has keyword-only parameters, only they are keys (the others are
    the data the entry works on, e.g. a partitioner's labels).
    """
    hints = _hints(obj)
    out: list[Key] = []
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            tp, sp = _split(hints.get(f.name, Any))
            if sp == Spec():  # a subclass that redeclares a field keeps its base's spec
                sp = _inherited_spec(obj if isinstance(obj, type) else type(obj), f.name, tp)
            if f.default is not dataclasses.MISSING:
                default, required = f.default, False
            elif f.default_factory is not dataclasses.MISSING:
                default, required = f.default_factory(), False
            else:
                default, required = None, True
            out.append(Key(f.name, tp, sp, default, required))
        return out
    fn: Callable[..., Any] = obj.__init__ if isinstance(obj, type) else obj  # type: ignore[misc]
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.KEYWORD_ONLY for p in params):  # f(data, *, key=...): the keys are after *
        params = [p for p in params if p.kind is p.KEYWORD_ONLY]
    for p in params:
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp, sp = _split(hints.get(p.name, Any))
        required = p.default is inspect.Parameter.empty
        out.append(Key(p.name, tp, sp, None if required else p.default, required))
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_list(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str | bytes)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _or(choices: Sequence[Any]) -> str:
    names = [str(c) for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _range_text(sp: Spec) -> str:
    lo = None if sp.low is None else f"{'>' if sp.low_open else '>='} {sp.low:g}"
    hi = None if sp.high is None else f"{'<' if sp.high_open else '<='} {sp.high:g}"
    if lo and hi:
        left, right = ("(" if sp.low_open else "["), (")" if sp.high_open else "]")
        return f"in {left}{sp.low:g}, {sp.high:g}{right}"
    return lo or hi or ""


def _type_text(tp: Any, sp: Spec) -> str:
    """Words for what a type with a spec allows: ``an integer >= 1``, ``a pair of integers``."""
    if sp.allowed:
        return sp.allowed
    if sp.choices is not None:
        return _or(sp.choices)
    args = _union_args(tp)
    if args is not None:
        parts = [_type_text(a, sp) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if typing.get_origin(tp) is Literal:
        return _or(typing.get_args(tp))
    rng = _range_text(sp)
    base = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp)
    if base is not None:
        return f"{base} {rng}".strip() if tp in (int, float) else base
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        items = typing.get_args(tp)
        item = items[0] if items else Any
        word = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(item)
        word = word or "values"
        if rng:
            word = f"{word} {rng}"
        if sp.length == 2:
            return f"a pair of {word} [a, b]"
        if sp.length is not None:
            return f"a list of {sp.length} {word}"
        return f"a list of {word}"
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        return "a mapping"
    return "any value"


def describe(tp: Any, sp: Spec | None = None) -> str:
    """What a key allows, in words (used in error lines and README tables)."""
    return _type_text(tp, sp or Spec())


def _in_range(v: float, sp: Spec) -> bool:
    if sp.low is not None and (v <= sp.low if sp.low_open else v < sp.low):
        return False
    return not (sp.high is not None and (v >= sp.high if sp.high_open else v > sp.high))


def conforms(value: Any, tp: Any, sp: Spec | None = None) -> bool:
    """Whether ``value`` is of type ``tp`` and within ``sp``."""
    sp = sp or Spec()
    if sp.choices is not None and value not in sp.choices:
        return False
    args = _union_args(tp)
    if args is not None:
        if value is None:
            return type(None) in args
        return any(conforms(value, a, sp) for a in args if a is not type(None))
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if typing.get_origin(tp) is Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return _is_int(value) and _in_range(value, sp)
    if tp is float:
        return _is_number(value) and _in_range(float(value), sp)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not _is_list(value) or (sp.length is not None and len(value) != sp.length):
            return False
        items = typing.get_args(tp)
        if origin is tuple and items and items[-1] is not Ellipsis:
            return len(items) == len(value) and all(
                conforms(v, t, Spec(low=sp.low, high=sp.high))
                for t, v in zip(items, value, strict=True)
            )
        item = items[0] if items else Any
        inner = Spec(low=sp.low, high=sp.high, low_open=sp.low_open, high_open=sp.high_open)
        return all(conforms(v, item, inner) for v in value)
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        return isinstance(value, Mapping)
    return True  # a type the schema does not model (a tensor, a callable): the entry checks it


def check_params(
    prefix: str,
    obj: Any,
    params: Mapping[str, Any],
    *,
    what: str | None = None,
    exclude: Sequence[str] = (),
) -> None:
    """Check config values against the keys declared by ``obj``.

    Parameters
    ----------
    prefix
        The config node's dotted key, e.g. ``"attack"`` (errors name ``attack.trigger_pos``).
    obj
        A dataclass, a class or a function whose fields or keyword parameters declare the keys.
    params
        The node's values (without ``name``).
    what
        How the entry is named in an unknown-key error, e.g. ``"attack 'cba'"``.
    exclude
        Declared parameters that are not config keys (a model's shape, set from the data).

    Raises
    ------
    ConfigError
        One line: an unknown key (listing the allowed ones) or a value of the wrong type, out of
        range or of the wrong length (naming what is allowed).
    """
    keys = {k.name: k for k in keys_of(obj) if k.name not in exclude}
    for name in params:
        if name not in keys:
            raise ConfigError(
                f"invalid {prefix} parameter {name!r}"
                + (f" for {what}" if what else "")
                + f": allowed {', '.join(keys) or 'none'}"
            )
    for name, value in params.items():
        key = keys[name]
        if not conforms(_plain(value), key.type, key.spec):
            where = f"{prefix}.{name}" if prefix else name
            raise invalid(where, _plain(value), describe(key.type, key.spec))


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain lists and dicts (for messages and checks)."""
    if hasattr(value, "_content") and hasattr(value, "_metadata"):  # an OmegaConf node
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def table(obj: Any, *, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows ``(key, default, allowed, description)`` of ``obj``'s declared keys (README tables)."""
    rows = []
    for k in keys_of(obj):
        default = "required" if k.required else _yaml(k.default)
        rows.append((f"{prefix}{k.name}", default, describe(k.type, k.spec), k.spec.doc))
    return rows


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)

"""Config values checked against the type hints of what they configure, before anything is built.

Every node of the resolved config with a ``_target_`` (the data module, the Trainer and its strategy, callbacks,
loggers, the optimiser ...) is matched against the signature of its target (the model's options are typed by
their dataclass, :class:`scalor.model.SCALORConfig`, which Hydra checks as it composes): a value whose type the
parameter's annotation cannot take ends the run with one line naming the key, the value and the expected type.
Only plain annotations are judged (numbers, booleans, strings, None, literals, lists, mappings and unions of
them); a parameter that also takes other objects (a Strategy, a timedelta ...) is left to its target.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from scalor.errors import ConfigError

_PLAIN = (int, float, bool, str, type(None), list, tuple, dict)
_SAYS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", type(None): "null",
         list: "a list", tuple: "a list", Sequence: "a list", dict: "a mapping", Mapping: "a mapping"}


def check_types(node: Any, key: str = "") -> None:
    """Raise ConfigError for the first value under ``node`` (a resolved config as plain dicts and lists) that the
    type hints of its node's ``_target_`` reject."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            _check_node(node, key)
        for name, value in node.items():
            check_types(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_types(value, f"{key}[{i}]")


def _check_node(node: Mapping, key: str) -> None:
    try:
        from hydra.utils import get_object

        target = get_object(str(node["_target_"]))
        hints: dict[str, Any] = {}
        for owner in reversed(inspect.getmro(target) if inspect.isclass(target) else (target,)):
            if owner is not object:  # a subclass's own parameters, then those it passes on with **kwargs
                hints.update(typing.get_type_hints(owner.__init__ if inspect.isclass(owner) else owner))
    except Exception:  # noqa: BLE001 - an unknown target or unresolvable hints: instantiate reports it
        return
    for name, value in node.items():
        if name.startswith("_") or name not in hints or isinstance(value, Mapping) and "_target_" in value:
            continue
        verdict = accepts(value, hints[name])
        if verdict is False:
            where = f"{key}.{name}" if key else name
            takes = expected(hints[name])
            fix = takes if len(takes) <= 40 else "one of those"
            raise ConfigError(f"{where}={_show(value)} has the wrong type: {node['_target_'].split('.')[-1]}'s "
                              f"{name} takes {takes}; set {where} to {fix}.")


def accepts(value: Any, hint: Any) -> bool | None:
    """Whether ``hint`` takes ``value``: True / False where the hint is plain enough to judge, None where it also
    takes other objects."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin is typing.Literal:
        return value in args and not (isinstance(value, bool) and True not in args and False not in args)
    if origin in (typing.Union, types.UnionType):
        verdicts = [accepts(value, arg) for arg in args]
        return True if True in verdicts else (None if None in verdicts else False)
    base = origin or hint
    if base in (Sequence, list, tuple):
        return isinstance(value, (list, tuple))
    if base in (Mapping, dict):
        return isinstance(value, Mapping)
    if base not in _PLAIN:
        return None
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


def expected(hint: Any) -> str:
    """What ``hint`` takes, in words ("a number", "true or false", "one of 16, 32, 64")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # the literals of every member together, then the other types
        literals = [a for arg in args if typing.get_origin(arg) is typing.Literal for a in typing.get_args(arg)]
        others = [expected(arg) for arg in args if typing.get_origin(arg) is not typing.Literal]
        parts = ([_one_of(literals)] if literals else []) + others
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return _one_of(args)
    return _SAYS.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _one_of(values: Sequence) -> str:
    return "one of " + ", ".join(dict.fromkeys(str(v) for v in values))


def _show(value: Any) -> str:
    return "null" if value is None else str(value)

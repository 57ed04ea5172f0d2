"""One schema idiom for what hatzoo reads (checkpoint config, bundle manifest, zoo cards, server options):
checks that name the key path (``tasks.2.labels[0]``) and what was expected. Torch-free, so the server
shares it.

Structure is declared where it can be: a dataclass whose fields carry their checks (:func:`rule`) is
checked by :meth:`Schema.fields` (a mapping read into it) or :meth:`Schema.instance` (its own values);
the primitives (``mapping``, ``integer``, ``number``, ``string``, ``items``) check the rest.
"""

from __future__ import annotations

import dataclasses
import math
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from hatzoo.errors import HATError


def rule(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    lo: float | None = None,
    hi: float | None = None,
    open_lo: bool = False,
    open_hi: bool = False,
    choices: tuple[Any, ...] | str | None = None,
    lower: bool = False,
    **extra: Any,
) -> Any:
    """A dataclass field with the checks :meth:`Schema.fields` applies beyond its type hint.

    ``lo`` / ``hi``: bounds of a number (``open_lo`` / ``open_hi``: a float may not equal the bound);
    ``choices``: the allowed values, or a ``"module:NAME"`` registry read when checked (a module of the
    declaring module's layer or below); ``lower``: a string is lower-cased before the choice.
    ``extra`` stays in the metadata for other readers (command-line help).
    """
    checks = {"lo": lo, "hi": hi, "open_lo": open_lo, "open_hi": open_hi, "choices": choices, "lower": lower}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=checks | extra)
    return dataclasses.field(default=default, metadata=checks | extra)


class Schema:
    """Checks of one document; ``where`` (the file) starts every message, ``error`` is the class raised.

    A message reads ``<where>: <path><SEPARATOR><what>``; a subclass may word the unknown key and the
    unknown value its own way (``UNKNOWN_KEY``, ``UNKNOWN_VALUE``) where users know that wording.
    """

    error: type[HATError] = HATError
    SEPARATOR = " "
    UNKNOWN_KEY = "is not a known key (known: {known})"
    UNKNOWN_VALUE = "must be one of {choices}, got {value!r}"

    def __init__(self, where: str) -> None:
        self.where = where
        self.faults: list[str] = []

    def fail(self, path: str, message: str) -> HATError:
        return self.error(f"{self.where}: {path}{self.SEPARATOR}{message}")

    def mapping(self, value: Any, path: str, required: set[str], optional: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {kind(value)}")
        if missing := sorted(required - set(value)):
            raise self.fail(f"{path}.{missing[0]}", "is missing")
        self.known(value, path, sorted(required | optional))
        return value

    def known(self, value: Mapping[str, Any], path: str, known: list[str]) -> None:
        """Refuse the first key of ``value`` that is not in ``known`` (``path``: where ``value`` is)."""
        if extra := sorted(set(value) - set(known)):
            where = f"{path}.{extra[0]}" if path else str(extra[0])
            raise self.fail(where, self.UNKNOWN_KEY.format(known=", ".join(known)))

    def integer(self, value: Any, path: str, lo: float = -math.inf, hi: float = math.inf) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(path, f"must be an integer, got {kind(value)}")
        if not lo <= value <= hi:
            bounds = f"in [{lo}, {hi}]" if hi < math.inf else f">= {lo}" if lo > -math.inf else f"<= {hi}"
            raise self.fail(path, f"must be {bounds}, got {value}")
        return value

    def number(
        self,
        value: Any,
        path: str,
        lo: float,
        hi: float = math.inf,
        open_lo: bool = False,
        open_hi: bool = False,
    ) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.fail(path, f"must be a finite number, got {value!r}")
        if value < lo or (open_lo and value == lo) or value > hi or (open_hi and value == hi):
            bound = "" if lo == -math.inf else f"> {lo}" if open_lo else f">= {lo}"
            upper = "" if hi == math.inf else f"< {hi}" if open_hi else f"<= {hi}"
            raise self.fail(path, f"must be {' and '.join(b for b in (bound, upper) if b)}, got {value}")
        return float(value)

    def string(self, value: Any, path: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {kind(value)}")
        self.choice(value, path, choices)
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {kind(value)}")
        return value

    def choice(self, value: Any, path: str, choices: Any) -> Any:
        """``value`` if it is one of ``choices`` (None: any value)."""
        if choices is not None and value not in choices:
            raise self.fail(path, self.UNKNOWN_VALUE.format(choices=list(choices), value=value))
        return value

    def items(self, value: Any, path: str, max_len: int, length: int | None = None) -> list:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, got {kind(value)}")
        if length is not None and len(value) != length:
            raise self.fail(path, f"must have {length} entries, got {len(value)}")
        if len(value) > max_len:
            raise self.fail(path, f"has {len(value)} entries; at most {max_len} are allowed")
        return value

    def numbers(self, value: Any, path: str, length: int | None, positive: bool = False) -> None:
        for i, x in enumerate(self.items(value, path, 64, length)):
            self.number(x, f"{path}[{i}]", 0.0 if positive else -math.inf, open_lo=positive)

    def collect(self, check: Callable[..., Any], *args: Any) -> Any:
        """``check(*args)``, keeping its fault for ``raise_collected`` instead of raising it now, so that
        one error names every bad field (None when it failed)."""
        try:
            return check(*args)
        except self.error as e:
            self.faults.append(str(e).removeprefix(f"{self.where}: "))
            return None

    def raise_collected(self) -> None:
        """Raise one error naming every fault collected so far, on one line."""
        if self.faults:
            raise self.error(f"{self.where}: {'; '.join(self.faults)}")

    # ------------------------------------------------------------------ declared by dataclass fields
    def fields(
        self, cls: type, data: Mapping[str, Any], path: str = "", *, registries: bool = True, **given: Any
    ) -> dict[str, Any]:
        """The field values of dataclass ``cls`` that mapping ``data`` holds, each checked by its type
        hint and its :func:`rule`; a missing key takes the field's default, ``given`` ones are taken as
        they are. ``registries=False`` skips choices named by a registry (reading it may import torch)."""
        self.known(data, path, [f.name for f in dataclasses.fields(cls)])
        hints = typing.get_type_hints(cls)
        values = dict(given)
        for f in dataclasses.fields(cls):
            if f.name in given:
                continue
            key = f"{path}.{f.name}" if path else f.name
            if f.name in data:
                value = data[f.name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                raise self.fail(key, "is missing")
            values[f.name] = self.field_value(value, hints[f.name], f.metadata, key, registries)
        return values

    def instance(self, obj: Any) -> None:
        """Check a dataclass instance's own values against its fields' types and rules."""
        self.fields(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})

    def field_value(
        self, value: Any, hint: Any, checks: Mapping[str, Any], path: str, registries: bool
    ) -> Any:
        """One field's value checked: ``X | None`` takes null; ``float`` takes an int (as a float)."""
        kinds = (
            typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        )
        if value is None and type(None) in kinds:
            return None
        expected = next(k for k in kinds if k is not type(None))
        choices = checks.get("choices")
        if isinstance(choices, str):  # a registry: its names, or (not read) any value of the type
            choices = pkgutil.resolve_name(choices) if registries else None
        if checks.get("lower") and isinstance(value, str):
            value = value.lower()
        if choices is not None:
            return self.choice(value, path, choices)
        lo, hi = checks.get("lo"), checks.get("hi")
        lo, hi = -math.inf if lo is None else lo, math.inf if hi is None else hi
        if expected is bool:
            return self.boolean(value, path)
        if expected is int:
            return self.integer(value, path, lo, hi)
        if expected is float:
            return self.number(
                value, path, lo, hi, checks.get("open_lo", False), checks.get("open_hi", False)
            )
        if expected is str:
            return self.string(value, path)
        origin = typing.get_origin(expected) or expected
        accepted = (list, tuple) if origin in (list, tuple) else (origin,)
        if isinstance(origin, type) and not isinstance(value, accepted):
            raise self.fail(path, f"must be a {_KIND_NAMES.get(origin, origin.__name__)}, got {kind(value)}")
        return value


_KIND_NAMES = {dict: "mapping", list: "list", tuple: "list"}


def kind(value: Any) -> str:
    """A value's type and text, short, for messages."""
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]

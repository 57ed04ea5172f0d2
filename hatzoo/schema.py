"""One schema idiom for the JSON files hatzoo reads (checkpoint config, bundle manifest): checks that
name the key path (``tasks.2.labels[0]``) and what was expected. Torch-free, so the server shares it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hatzoo.errors import HATError


class Schema:
    """Checks of one document; ``where`` (the file) starts every message, ``error`` is the class raised."""

    error: type[HATError] = HATError

    def __init__(self, where: str) -> None:
        self.where = where
        self.faults: list[str] = []

    def fail(self, path: str, message: str) -> HATError:
        return self.error(f"{self.where}: {path} {message}")

    def mapping(self, value: Any, path: str, required: set[str], optional: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {kind(value)}")
        if missing := sorted(required - set(value)):
            raise self.fail(f"{path}.{missing[0]}", "is missing")
        if extra := sorted(set(value) - required - optional):
            raise self.fail(
                f"{path}.{extra[0]}", f"is not a known key (known: {', '.join(sorted(required | optional))})"
            )
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(path, f"must be an integer, got {kind(value)}")
        if not lo <= value <= hi:
            raise self.fail(path, f"must be in [{lo}, {hi}], got {value}")
        return value

    def number(self, value: Any, path: str, lo: float, hi: float = math.inf, open_lo: bool = False) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.fail(path, f"must be a finite number, got {value!r}")
        if value < lo or (open_lo and value == lo) or value > hi:
            bound = f"> {lo}" if open_lo else f">= {lo}"
            raise self.fail(
                path, f"must be {bound}" + (f" and <= {hi}" if hi < math.inf else "") + f", got {value}"
            )
        return float(value)

    def string(self, value: Any, path: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {kind(value)}")
        if choices is not None and value not in choices:
            raise self.fail(path, f"must be one of {list(choices)}, got {value!r}")
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


def kind(value: Any) -> str:
    """A value's type and text, short, for messages."""
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]

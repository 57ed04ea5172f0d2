"""One registry idiom for every named choice (architectures, policies, schedules, benchmarks, optimizers).

Following timm's ``_registry.py``: entries are added with a decorator at their definition, and a
lookup of an unknown name is an error that lists the known ones::

    SCHEDULES = Registry("mask-scale schedule")

    @SCHEDULES.register("linear")
    class LinearScale(ScaleSchedule): ...

    SCHEDULES.get("linear")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hatzoo.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order, each with a one-line help text."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "", *, first: bool = False) -> Callable[[T], T]:
        """A decorator adding its target under ``name``; ``first`` puts it before the entries so far."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise InputError(f"a {self.kind} named {name!r} is already registered; choose another name")
            self._entries = {name: entry, **self._entries} if first else {**self._entries, name: entry}
            self._help[name] = help
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name is an InputError listing the known ones."""
        if name not in self._entries:
            raise InputError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def help(self) -> dict[str, str]:
        """One line per entry, in order."""
        return dict(self._help)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

"""Name -> entry tables for the choices users make by name in a config or on the command line.

One shape for every choice (method, dataset, DML loss, pooler, judge preset): `register(name, entry)` once, where
the entry is defined; `get(name)` (a `ConfigError` listing the known names for a typo); `names()` for the CLI's and
the config's choices, so they are never copied by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from saga.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind ("method", "dataset", ...), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {list(self._entries)}")
        return self._entries[name]

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

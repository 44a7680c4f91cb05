"""Named parts, registered by name: methods, AM flow integrations, dataset sources.

A registry maps a name (what a params file says) to its part. Adding a part is one module that
registers it; the places that need the list of names (the schema's checks, the CLI's choices, the
workflow's wildcards) ask the registry instead of repeating it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Generic, Iterator, TypeVar

from amflow.errors import AmflowError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # what the parts are, for the errors: "method", "AM flow integration", ...
        self._parts: dict[str, T] = {}

    def register(self, name: str, part: T) -> T:
        if name in self._parts:
            raise AmflowError(f"{self.kind} '{name}' is registered twice; give the new one another name")
        self._parts[name] = part
        return part

    def get(self, name: str) -> T:
        if name not in self._parts:
            raise AmflowError(f"unknown {self.kind} '{name}'; choose one of {', '.join(self._parts)}")
        return self._parts[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in the order they were registered."""
        return tuple(self._parts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    @contextmanager
    def added(self, name: str, part: T) -> Iterator[T]:
        """``part`` registered under ``name`` for the duration of a ``with`` block (tests, plug-ins tried out)."""
        self.register(name, part)
        try:
            yield part
        finally:
            del self._parts[name]

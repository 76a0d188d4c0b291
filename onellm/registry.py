"""One small `Registry` type; the library keeps a few instances (modalities, routers, ...)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from onellm.errors import RegistryError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """A name -> object table that validates names and refuses duplicates.

    >>> routers = Registry("routers")
    >>> @routers.register("soft")
    ... class Soft: ...
    """

    def __init__(self, kind: str, *, reserved: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.reserved = reserved  # names refused, with the reason given in the error
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()):
        """Register `obj` under `name` (usable as a decorator when `obj` is omitted)."""

        def add(target: T) -> T:
            for n in (name, *aliases):
                if not isinstance(n, str) or not _NAME.match(n):
                    raise RegistryError(
                        f"{self.kind}: invalid name {n!r}; expected lowercase letters, digits "
                        "and '_', starting with a letter"
                    )
                if n in self.reserved:
                    raise RegistryError(
                        f"{self.kind}: {n!r} clashes with the special token <{n}>; choose another name"
                    )
                if n in self._entries or n in self._aliases:
                    raise RegistryError(f"{self.kind}: {n!r} is already registered")
            self._entries[name] = target
            for a in aliases:
                self._aliases[a] = name
            return target

        return add if obj is None else add(obj)

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = ", ".join(sorted([*self._entries, *self._aliases])) or "(none)"
        raise RegistryError(f"unknown {self.kind} {name!r}; registered: {known}")

    def aliases(self, name: str) -> list[str]:
        """The other names `name` is registered under."""
        return sorted(a for a, c in self._aliases.items() if c == self.canonical(name))

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def build(self, name: str, **kwargs) -> object:
        """Look up `name` and call it with `kwargs` (the YAML `type:` convention)."""
        factory: Callable = self.get(name)  # type: ignore[assignment]
        return factory(**kwargs)

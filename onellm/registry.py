"""One small `Registry` type, and the library's extension points: one instance per kind of
plug-in, each also filled from its entry-point group.

A plug-in module ends in one registration (`ROUTERS.register("soft", SoftRouter)`) and is
named in its package's entry points (`[project.entry-points."onellm.routers"] soft =
"pkg.module"`); a lookup of a name not yet registered imports the module its entry point
names, so the core never imports a plug-in and an installed package adds one with no edit
to onellm. The shipped plug-ins are found the same way (pyproject.toml).
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from onellm.errors import RegistryError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """A name -> object table that validates names, refuses duplicates and loads what its
    entry-point group names on first lookup.

    >>> routers = Registry("routers")
    >>> @routers.register("soft")
    ... class Soft: ...
    """

    def __init__(
        self,
        kind: str,
        *,
        group: str | None = None,
        reserved: Callable[[], Iterable[str]] | tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.group = group  # the entry-point group installed packages name their plug-ins in
        self._reserved = reserved  # names refused (special tokens), or a function giving them
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._loaded_all = False

    @property
    def reserved(self) -> tuple[str, ...]:
        r = self._reserved
        return tuple(r() if callable(r) else r)

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

    def _known(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def _entry_points(self) -> dict[str, EntryPoint]:
        """The group's entry points by name; a name two installed packages both declare is
        refused, naming both (whichever loaded first would otherwise win unseen)."""
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=self.group) if self.group else ():
            if ep.name in found and found[ep.name].value != ep.value:
                raise RegistryError(
                    f"{self.kind} {ep.name!r} is declared twice in the {self.group} entry-point "
                    f"group: {found[ep.name].value} and {ep.value}; uninstall one"
                )
            found[ep.name] = ep
        return found

    def _load(self, name: str | None = None) -> None:
        """Import the plug-ins the entry-point group names (`name`'s only, or all of them).
        An entry point naming a module registers by importing it; one naming an object is
        registered under the entry point's name."""
        if self.group is None or (name is None and self._loaded_all):
            return
        for ep_name, ep in self._entry_points().items():
            if (name is not None and ep_name != name) or self._known(ep_name):
                continue
            try:
                obj = ep.load()
            except ImportError as e:
                raise RegistryError(
                    f"{self.kind} {ep_name!r}: its entry point {ep.value} ({self.group}) "
                    f"cannot be imported: {e}"
                ) from e
            if not self._known(ep_name) and not isinstance(obj, types.ModuleType):
                self.register(ep_name, obj)
        self._loaded_all = self._loaded_all or name is None

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases."""
        if not self._known(name):
            self._load(name)
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        # listed without importing every plug-in: what is registered, and what is declared
        listed = {*self._entries, *self._aliases, *self._entry_points()}
        known = ", ".join(sorted(listed)) or "(none)"
        raise RegistryError(f"unknown {self.kind} {name!r}; registered: {known}")

    def aliases(self, name: str) -> list[str]:
        """The other names `name` is registered under."""
        return sorted(a for a, c in self._aliases.items() if c == self.canonical(name))

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and not self._known(name):
            self._load(name)
        return self._known(name)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self, *, aliases: bool = False) -> list[str]:
        """Every registered name (entry points loaded), with the aliases if asked."""
        self._load()
        return sorted([*self._entries, *(self._aliases if aliases else ())])

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def build(self, name: str, **kwargs: Any) -> object:
        """Look up `name` and call it with `kwargs` (the YAML `type:` convention)."""
        factory: Callable = self.get(name)  # type: ignore[assignment]
        return factory(**kwargs)


# ----------------------------------------------------------------------------- extension points
def _output_tokens() -> list[str]:
    # a modality's placeholder `<m>` must not be a tokenizer token (<s>, <unk>, <pad>) nor an
    # output kind's special token (<seg>, <gen>, ...)
    return ["s", "unk", "pad", *OUTPUT_KINDS.names()]


MODALITIES: Registry[type] = Registry(
    "modality", group="onellm.modalities", reserved=_output_tokens
)
TASKS: Registry[Any] = Registry("task", group="onellm.tasks")
ROUTERS: Registry[type] = Registry("router", group="onellm.routers")
PROJECTIONS: Registry[type] = Registry("projection kind", group="onellm.projections")
OUTPUT_KINDS: Registry[type] = Registry("output kind", group="onellm.outputs")
DECODERS: Registry[Callable] = Registry("decoder", group="onellm.decoders")
AUXILIARY: Registry[Any] = Registry("auxiliary source", group="onellm.auxiliary")
MIXERS: Registry[type] = Registry("mixer", group="onellm.mixers")  # MoAI's, from `moai:`
# experts inside the LLM, from `llm_experts: {kind: ...}` (onellm/modeling/llm_experts.py)
LLM_EXPERTS: Registry[type] = Registry("llm expert kind", group="onellm.llm_experts")

EXTENSION_POINTS: dict[str, Registry] = {
    r.group: r  # type: ignore[misc]
    for r in (
        MODALITIES,
        TASKS,
        ROUTERS,
        PROJECTIONS,
        OUTPUT_KINDS,
        DECODERS,
        AUXILIARY,
        MIXERS,
        LLM_EXPERTS,
    )
}

"""The index kinds: the one place that maps a kind name to its class.

A kind is one ``BinaryIndex`` subclass decorated with ``@register_kind``; it declares its name, exactness and
parameters (``Param``) and owns how it is built, read, extended and verified. Everything that lists kinds or
their parameters (the ``binary_index`` config, the search benchmark) asks this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from storage.index.base import BinaryIndex

DEFAULT_KIND = "flat"


@dataclass(frozen=True)
class Param:
    """A tuning parameter of a kind: positive integer or ``None`` (= derived from the data at build time)."""

    name: str
    default: int | None
    description: str


_KINDS: dict[str, type[BinaryIndex]] = {}
K = TypeVar("K", bound="type[BinaryIndex]")


def register_kind(cls: K) -> K:
    """Class decorator: make ``cls`` the index kind named ``cls.kind``."""
    name = cls.kind
    if name in _KINDS and _KINDS[name] is not cls:
        raise ValueError(f"index kind {name!r} is already registered by {_KINDS[name].__name__}")
    _KINDS[name] = cls
    return cls


def unregister_kind(name: str) -> None:
    """Forget the kind ``name`` (for kinds registered by tests)."""
    _KINDS.pop(name, None)


def kind_names() -> tuple[str, ...]:
    """Registered kind names, in registration order."""
    return tuple(_KINDS)


def get_kind(name: str, item: str = "index") -> type[BinaryIndex]:
    """The class of kind ``name``; raises ValueError naming ``item`` for an unknown kind."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(
            f"{item}: unknown index kind {name!r}; choose one of {', '.join(kind_names())}"
        ) from None


def param_fields() -> dict[str, str]:
    """Every kind parameter (the union over kinds, in registration order) -> its description, prefixed with the
    kinds that take it (``"hnsw: links per node"``)."""
    takers: dict[str, list[str]] = {}
    described: dict[str, str] = {}
    for name, cls in _KINDS.items():
        for p in cls.param_specs:
            takers.setdefault(p.name, []).append(name)
            described.setdefault(p.name, p.description)
    return {p: f"{', '.join(takers[p])}: {described[p]}" for p in takers}

"""Name registries for every pluggable method (datasets, partitioners, models, learners, ...).

A registry maps a name to a small class or function. Registration is a decorator that refuses
duplicates (as torchvision's ``register_model``); lookup of an unknown name raises a
:class:`~fedsim.errors.ConfigError` that lists the valid names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fedsim.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of entries of one kind.

    Parameters
    ----------
    kind
        What the entries are (``"dataset"``, ``"model"``, ...). It is also the name of the Hydra
        config group that selects an entry.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator that registers an entry under ``name``, with optional metadata.

        Raises
        ------
        ValueError
            If ``name`` is already registered.
        """

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"duplicate {self.kind} name {name!r}: already registered")
            self._entries[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the entry registered as ``name``.

        Raises
        ------
        ConfigError
            If no entry has that name; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}: valid {self.kind} names are {', '.join(self.names())}"
            ) from None

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata given at registration (capability flags and the like)."""
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

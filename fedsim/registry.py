"""Name registries for every pluggable method (datasets, partitioners, models, learners, ...).

A registry maps a name to a small class or function. Registration is a decorator that refuses
duplicates (as torchvision's ``register_model``); lookup of an unknown name raises a
:class:`~fedsim.errors.ConfigError` that lists the valid names.

A registry filled by plugins (see :mod:`fedsim.registries`) has a ``loader``: the first lookup
that misses, and every listing, calls it first (:func:`fedsim.plugins.load_plugins`), so core code
can look a plugin's entry up without importing the plugin package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from fedsim.errors import ConfigError
from fedsim.schema import check_params

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of entries of one kind.

    Parameters
    ----------
    kind
        What the entries are (``"dataset"``, ``"model"``, ...). It is also the name of the Hydra
        config group that selects an entry.
    loader
        Called (once it has been, it is expected to return at once) before a lookup that misses
        and before a listing: it imports the plugins that fill this registry.
    """

    def __init__(self, kind: str, *, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            self._loader()

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
        if name not in self._entries:
            self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}: valid {self.kind} names are {', '.join(self.names())}"
            ) from None

    def build(
        self,
        name: str,
        params: Mapping[str, Any],
        *,
        prefix: str | None = None,
        what: str | None = None,
        fixed: Mapping[str, Any] | None = None,
    ) -> Any:
        """The entry ``name`` called with a config node's ``params`` and with ``fixed``.

        This is fedsim's one way to build a registered entry from config. ``params`` are checked
        against the keys the entry declares (a dataclass's fields, a function's keyword
        parameters) before the call: an unknown key or a value of the wrong type, range or length
        gets one line (:func:`fedsim.schema.check_params`).

        Parameters
        ----------
        name
            The registered name.
        params
            The config node's values, without ``name``.
        prefix
            The node's dotted key in messages (default: the registry's kind).
        what
            How the entry is named in an unknown-key message (default: ``"<kind> '<name>'"``).
        fixed
            Arguments fedsim sets, not config keys (a model's input shape): a config key of the
            same name is refused as unknown.
        """
        entry = self.get(name)
        fixed = dict(fixed or {})
        check_params(
            prefix or self.kind,
            entry,
            params,
            what=what or f"{self.kind} {name!r}",
            exclude=tuple(fixed),
        )
        plain = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in params.items()}
        return entry(**fixed, **plain)  # type: ignore[operator]

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata given at registration (capability flags and the like)."""
        self.get(name)
        return self._meta[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in registration order."""
        self._load()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

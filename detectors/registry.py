"""Detectors by name: config says ``detector: {kind: cusum, ...}``, this module builds it.

Unknown kinds and bad parameters raise ``ValueError`` naming what is allowed, so a config file is
rejected before the service starts rather than when the first event arrives.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

#: What a metric's observations look like, so config validation can refuse e.g. a Bernoulli
#: CUSUM on latency. ``bernoulli``: 0/1 error bits; ``continuous``: a real value that is worse when
#: larger; ``distribution``: values whose distribution is compared against a reference window;
#: ``preference``: one interleaved impression, 0 a win for the variant, 1 a loss, 0.5 a tie.
INPUT_KINDS = ("bernoulli", "continuous", "distribution", "preference")


class Registered(Protocol):
    """What the registry needs to know of a detector class."""

    kind: ClassVar[str]
    #: True for detectors that compare a variant against another one (need ``compare_to``).
    two_sample: ClassVar[bool]
    #: Which of ``INPUT_KINDS`` the detector accepts.
    inputs: ClassVar[frozenset[str]]

    def to_state(self) -> Any: ...


_T = TypeVar("_T")
_REGISTRY: dict[str, type[Any]] = {}


def register(cls: type[_T]) -> type[_T]:
    """Class decorator: make ``cls`` available by its ``kind``."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'kind'")
    if kind in _REGISTRY and _REGISTRY[kind] is not cls:
        raise TypeError(f"detector kind {kind!r} is registered twice")
    for attr in ("two_sample", "inputs"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} needs a class attribute {attr!r}")
    _REGISTRY[kind] = cls
    return cls


def _load_builtins() -> None:
    # Importing the package registers every built-in detector (each module uses @register).
    import driftswitch.detectors  # noqa: F401


def kinds() -> list[str]:
    """The registered detector kinds, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def detector_class(kind: str) -> type[Any]:
    """The class registered under ``kind``; ``ValueError`` listing the known kinds otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(
            f"unknown detector kind {kind!r}; known kinds: {', '.join(sorted(_REGISTRY))}"
        ) from None


def parameters(kind: str) -> dict[str, inspect.Parameter]:
    """The constructor parameters of ``kind`` (keyword-only names, defaults)."""
    init: Callable[..., Any] = detector_class(kind).__init__
    params = dict(inspect.signature(init).parameters)
    params.pop("self", None)
    return params


def create(spec: Mapping[str, Any]) -> Any:
    """Build a detector from ``{"kind": ..., **params}``.

    ``ValueError`` for an unknown kind, an unknown parameter (listing the allowed ones) or a
    parameter the detector rejects (its own message).
    """
    if "kind" not in spec:
        raise ValueError(f"detector needs a 'kind'; known kinds: {', '.join(kinds())}")
    kind = spec["kind"]
    if not isinstance(kind, str):
        raise ValueError(f"detector kind must be a string, got {kind!r}")
    cls = detector_class(kind)
    params = {k: v for k, v in spec.items() if k != "kind"}
    allowed = parameters(kind)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for detector {kind!r}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    missing = [
        name
        for name, p in allowed.items()
        if p.default is inspect.Parameter.empty and name not in params
    ]
    if missing:
        raise ValueError(f"detector {kind!r} needs parameter(s) {', '.join(missing)}")
    try:
        return cls(**params)
    except TypeError as exc:  # e.g. a string where a number was expected
        raise ValueError(f"bad parameters for detector {kind!r}: {exc}") from None


def restore(state: Mapping[str, Any]) -> Any:
    """Rebuild any registered detector from its ``to_state()`` output (dispatch on ``kind``)."""
    kind = state.get("kind")
    if not isinstance(kind, str):
        raise ValueError("detector state has no 'kind'")
    return detector_class(kind).from_state(state)

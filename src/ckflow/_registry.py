"""``register_flow``: flows by name, so that any process can rebuild the flow of a stored run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ckflow._checkpoint import _is_name
from ckflow._errors import FlowDefinitionError, FlowNotRegisteredError
from ckflow._patterns import Flow

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["register_flow", "registered_flow", "registered_flows"]

_FACTORIES: Final[dict[str, Callable[[], Flow] | Flow]] = {}
#: name -> the flow built from its factory, once (so it is compiled once per process)
_BUILT: Final[dict[str, Flow]] = {}


def register_flow(name: str, factory: Callable[[], Flow] | Flow) -> None:
    """Register the flow called ``name``, built by ``factory()`` (or given as a flow object).

    A run records the name of its flow; an engine that resumes or takes over
    the run (in this process or another) rebuilds the flow from this
    registry, and ``engine.start(name)`` starts one. Register at import time
    of a module that every worker imports. The factory is called once, on
    first use; registering a name again replaces it.

    Raises:
        TypeError: ``name`` is not a non-empty string, or ``factory`` is neither callable nor a flow.
    """
    if not _is_name(name):
        raise TypeError(f"register_flow() needs a flow name (a non-empty string), got {name!r}.")
    if not (isinstance(factory, Flow) or callable(factory)):
        raise TypeError(f"register_flow({name!r}, ...) needs a flow or a function that builds one, got {factory!r}.")
    _FACTORIES[name] = factory
    _BUILT.pop(name, None)


def registered_flow(name: str) -> Flow:
    """The flow registered as ``name``, built on first use.

    Raises:
        FlowNotRegisteredError: nothing is registered under ``name``.
        FlowDefinitionError: the factory built something else than a flow called ``name``.
    """
    flow = _BUILT.get(name)
    if flow is not None:
        return flow
    factory = _FACTORIES.get(name)
    if factory is None:
        raise FlowNotRegisteredError(name, list(_FACTORIES))
    flow = factory if isinstance(factory, Flow) else factory()
    if not isinstance(flow, Flow):
        raise FlowDefinitionError(f"The factory registered as flow {name!r} returned {flow!r}, not a flow.")
    if flow.name != name:
        raise FlowDefinitionError(
            f"The flow registered as {name!r} is named {flow.name!r}; a run records its flow's name, so "
            f"register it as {flow.name!r}."
        )
    _BUILT[name] = flow
    return flow


def registered_flows() -> list[str]:
    """The names of the registered flows, sorted."""
    return sorted(_FACTORIES)

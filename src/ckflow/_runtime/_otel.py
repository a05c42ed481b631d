"""OpenTelemetry for runs: the ``otel`` extra, on when the application has set a tracer or meter provider.

Without the extra installed nothing of OpenTelemetry is imported and a run has
no telemetry; with it, ``_otel_spans`` makes each run's spans and metrics
(see there for what is measured).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ckflow._runtime._otel_spans import RunTelemetry
    from ckflow._runtime._ports import RegionView
    from ckflow._runtime._state import RunState

__all__ = ["capture_context", "telemetry_for"]

#: True when ``opentelemetry-api`` is installed (the ``otel`` extra)
AVAILABLE: Final = importlib.util.find_spec("opentelemetry") is not None


def capture_context() -> object | None:
    """The OpenTelemetry context current where a run is started (None without the extra)."""
    if not AVAILABLE:
        return None
    from ckflow._runtime._otel_spans import capture_context as capture

    return capture()


def telemetry_for(core: RunState, region_of: Sequence[RegionView | None]) -> RunTelemetry | None:
    """The run's telemetry, or None when neither traces nor metrics are on, or the extra is missing."""
    if not AVAILABLE:
        return None
    from ckflow._runtime._otel_spans import telemetry_for as make  # imported once; a dict lookup after

    return make(core, region_of)

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import structlog

from ckflow.testing import set_testing

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True, scope="session")
def _quiet_structlog() -> Iterator[None]:
    """Keep ckflow's debug events out of test output; tests that read logs use capture_logs()."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _production_mode() -> Iterator[None]:
    """Every test starts with ckflow's test mode off; tests that want it turn it on."""
    set_testing(False)
    yield
    set_testing(False)

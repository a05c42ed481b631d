"""Transitional alias: ``Run`` now lives in ``ckflow._engine`` (``_engine/_handles.py``).

Kept only because ``_cli_control.py`` (being restructured on another branch) still names ``ckflow._run.Run`` in
its type annotations; delete this module once it imports ``Run`` from ``ckflow._engine``.
"""

from __future__ import annotations

from ckflow._engine._handles import Run as Run

__all__ = ["Run"]

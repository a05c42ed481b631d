"""Running one run: its state, the scheduler, the revert walker, checkpoint passes and control (private).

Modules are imported by their own names (``ckflow._runtime._core``); this package's ``__init__`` imports
nothing, so that importing one part never drags in the others.
"""

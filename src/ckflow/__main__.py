"""``python -m ckflow``: the command line."""

from __future__ import annotations

import sys

from ckflow._cli import main

if __name__ == "__main__":
    sys.exit(main())

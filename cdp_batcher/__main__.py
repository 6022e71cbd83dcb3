"""``python -m cdp_batcher`` and the ``cdp-batcher`` console script.

>>> main(["--version"])  # doctest: +SKIP
cdp-batcher 0.1.0
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

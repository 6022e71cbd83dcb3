"""``python -m cdp_batcher.testing``: run the local collector in the foreground."""

from . import main

raise SystemExit(main())

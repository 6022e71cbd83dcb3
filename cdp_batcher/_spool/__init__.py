"""The durable spool: per-destination segment logs in a directory shared by processes.

See ``_format`` (bytes on disk), ``_log`` (one destination's FIFO and acknowledgements),
``_dir`` (owners, locks, adoption, budget) and ``_files`` (the file-system seam).
"""

from ._dir import Spool, SpoolUnavailable
from ._files import Crash, FileOps
from ._format import FORMAT_VERSION
from ._inspect import SpoolOnDisk, inspect_spool
from ._log import DISK, DROPPED, FULL, MEMORY, NO_POS, Record, Stream
from ._queue import TRANSIENT_REASONS, SpoolQueue, is_transient

__all__ = [
    "DISK",
    "DROPPED",
    "FORMAT_VERSION",
    "FULL",
    "MEMORY",
    "NO_POS",
    "Crash",
    "FileOps",
    "Record",
    "Spool",
    "SpoolUnavailable",
    "SpoolOnDisk",
    "SpoolQueue",
    "Stream",
    "TRANSIENT_REASONS",
    "inspect_spool",
    "is_transient",
]

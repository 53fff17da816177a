"""criu_bindings: stdlib-only bindings to CRIU for mmbatch.

A small facade over private-ish modules, like psutil:

- wire.py      protobuf wire codec driven by declarative definitions
- messages.py  the definitions, transcribed from CRIU's .proto files
- transport.py `criu swrk` / `criu service` over SOCK_SEQPACKET
- client.py    `CriuClient`: version, check, feature_check, dump, pre_dump, restore
- images.py    inventory, stats and pagemap readers; `pages_layout`, `iter_pagemaps`
- report.py    `criu_report()` for `mmbatch doctor`
- errors.py    the error hierarchy (`CriuBindingsError` at its root)

Typical use::

    from criu_bindings import CriuClient, iter_pagemaps, read_dump_stats

    client = CriuClient()                       # $MMBATCH_CRIU, else criu on PATH
    client.dump({"pid": pid, "images_dir": d, "leave_running": True},
                notify=lambda ev: log.info("criu %s", ev.script))
    stats = read_dump_stats(d)
    for pagemap, pages, extents in iter_pagemaps(d):
        ...
"""

from __future__ import annotations

from .client import FEATURES, CriuClient, CriuVersion, DumpResult, NotifyEvent, RestoreResult, find_criu
from .errors import (
    BadMagicError,
    CorruptImageError,
    CriuBindingsError,
    CriuError,
    CriuNotFoundError,
    CriuNotifyError,
    CriuUnsupportedError,
    EncodeError,
    ImageError,
    MalformedVarintError,
    MissingFieldError,
    OversizedError,
    TransportError,
    TruncatedError,
    TruncatedImageError,
    WireError,
    WireTypeError,
)
from .images import (
    PE_LAZY,
    PE_PARENT,
    PE_PRESENT,
    DumpStats,
    Pagemap,
    PagemapEntry,
    PagesExtent,
    RestoreStats,
    iter_pagemaps,
    pages_layout,
    read_dump_stats,
    read_inventory,
    read_pagemap,
    read_restore_stats,
    read_stats,
)
from .report import criu_report

__all__ = [
    # client
    "CriuClient",
    "CriuVersion",
    "DumpResult",
    "RestoreResult",
    "NotifyEvent",
    "FEATURES",
    "find_criu",
    "criu_report",
    # images
    "read_inventory",
    "read_stats",
    "read_dump_stats",
    "read_restore_stats",
    "read_pagemap",
    "pages_layout",
    "iter_pagemaps",
    "DumpStats",
    "RestoreStats",
    "Pagemap",
    "PagemapEntry",
    "PagesExtent",
    "PE_PARENT",
    "PE_LAZY",
    "PE_PRESENT",
    # errors
    "CriuBindingsError",
    "WireError",
    "TruncatedError",
    "OversizedError",
    "MalformedVarintError",
    "WireTypeError",
    "MissingFieldError",
    "EncodeError",
    "ImageError",
    "BadMagicError",
    "TruncatedImageError",
    "CorruptImageError",
    "CriuNotFoundError",
    "TransportError",
    "CriuError",
    "CriuNotifyError",
    "CriuUnsupportedError",
]

"""The relay's entry point: the heap startup made is put out of the collector's reach."""

from __future__ import annotations

import gc

from ws_relay.main import settle_heap


def test_settle_heap_freezes_what_startup_allocated() -> None:
    before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()

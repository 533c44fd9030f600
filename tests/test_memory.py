"""HeapTrimmer: trims only once memory grows past its margin over the settled level."""

from __future__ import annotations

import sys

import pytest

from vistool.core.memory import HeapTrimmer, anonymous_resident_bytes


def test_trims_when_memory_grows_past_the_margin_over_the_settled_level():
    levels = iter([100, 102, 103, 104, 200, 100])  # per batch, from the second one
    trims = []
    trimmer = HeapTrimmer(margin=0.03, settle=2, measure=lambda: next(levels),
                          trim=lambda: trims.append(trimmer.batches))
    for _ in range(7):
        trimmer()
    # batch 2 sets the level (100); 102 and 103 are within 3%, 104 and 200 are not
    assert trims == [5, 6] and trimmer.trims == 2 and trimmer.level == 100


def test_does_nothing_where_it_cannot_measure_or_trim(monkeypatch):
    from vistool.core import memory

    calls = []
    unmeasured = HeapTrimmer(settle=1, measure=lambda: None, trim=lambda: calls.append(1))
    monkeypatch.setattr(memory, "_glibc_trim", lambda: None)  # another C library
    levels = iter([100, 200, 300])
    untrimmable = HeapTrimmer(settle=1, measure=lambda: calls.append(next(levels)))
    for _ in range(3):
        unmeasured()
        untrimmable()
    assert not calls and unmeasured.level is None and untrimmable.trims == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_measures_this_process_and_finds_glibc_trim():
    import platform

    resident = anonymous_resident_bytes()
    assert resident is not None and resident > 10 * 2**20
    trimmer = HeapTrimmer(settle=1, margin=-1.0)  # always over: trims on the second call
    trimmer()
    trimmer()
    assert trimmer.trims == (1 if platform.libc_ver()[0] == "glibc" else 0)

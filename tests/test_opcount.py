"""bench/opcount.py's counter (the CPU proxy of the GPU's host overhead and memory): operator calls,
fresh allocations and the peak of live bytes per phase, checked against sequences whose counts are known."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.opcount import OpCounter  # noqa: E402

MIB = 2**20


def test_counts_ops_and_fresh_allocations_but_not_in_place_ones() -> None:
    counter = OpCounter(warmup=0)
    a, b = torch.ones(4), torch.ones(4)
    with counter.phase("Gmain"):
        c = a + b  # one op, one fresh storage
        c.add_(1)  # one op, writes into its input
        d = c.view(2, 2)  # one op, shares c's storage
    assert (counter.ops["Gmain"], counter.allocs["Gmain"]) == (3, 1)
    assert torch.equal(d.flatten(), torch.full((4,), 3.0))


def test_peak_is_the_most_live_bytes_and_frees_are_seen() -> None:
    counter = OpCounter(warmup=0)
    with counter.phase("Gmain"):
        x = torch.empty(MIB // 4)  # 1 MiB of float32
        y = torch.empty(MIB // 2)  # 2 MiB: 3 MiB alive
        del x
        z = torch.empty(MIB // 8)  # 0.5 MiB: 2.5 MiB alive
    assert counter.peak["Gmain"] == 3 * MIB
    assert counter.live == 2.5 * MIB
    v = y.view(-1)
    del y
    assert counter.live == 2.5 * MIB  # a view keeps the storage alive
    del v, z
    assert counter.live == 0
    with counter.phase("Dmain"):
        w = torch.empty(MIB // 4)
    assert counter.peak["Dmain"] == MIB  # each phase's own peak
    del w
    row = counter.per_phase()
    assert row["Gmain"]["peak_mib"] == 3.0 and row["Dmain"]["peak_mib"] == 1.0
    assert row["step"]["peak_mib"] == 3.0


def test_nothing_is_counted_before_the_warmup_steps() -> None:
    counter = OpCounter(warmup=1)
    for _step in range(2):
        with counter.phase("Gmain"):
            _ = torch.ones(2) * 2
        with counter.phase("ema"):
            pass
    assert counter.calls["Gmain"] == 1 and counter.ops["Gmain"] == 2  # ones and mul, from step 1 only
    assert counter.per_phase()["Gmain"]["ops"] == 2

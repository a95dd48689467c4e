"""Side-by-side timing: every peer of a case measured in one process, alternating, after warm-up.

    warm-up each peer ─► choose `inner` calls per sample (≈ sample_seconds each)
    ─► rounds: peer 1 sample, peer 2 sample, ... (order rotated every round)
    ─► per peer: per-call time of every sample ─► median, p10, p90

Alternating the peers round by round means a burst of load from another process on this
shared machine hits every peer alike, so the ratios stay meaningful even when the absolute
times move. The garbage collector is off during a sample (as in `timeit`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Peer:
    """One implementation of a case: `call()` runs one step; `enter`/`exit` wrap each sample."""

    name: str
    call: Callable[[], object]
    enter: Callable[[], None] | None = None
    exit: Callable[[], None] | None = None


@dataclass
class Stats:
    """Per-call seconds over the samples of one peer."""

    median: float
    p10: float
    p90: float
    samples: list[float] = field(repr=False)
    inner: int = 1


def _sample(peer: Peer, inner: int) -> float:
    if peer.enter:
        peer.enter()
    call = peer.call
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(inner):
            call()
        elapsed = time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()
        if peer.exit:
            peer.exit()
    return elapsed / inner


def _calibrate(peer: Peer, sample_seconds: float, warmup_seconds: float) -> int:
    """Warm `peer` up and return how many calls make one sample of about `sample_seconds`."""
    deadline = time.perf_counter() + warmup_seconds
    calls = 0
    while calls < 3 or time.perf_counter() < deadline:
        per_call = _sample(peer, 1)
        calls += 1
        if per_call > sample_seconds and calls >= 2:
            break
    per_call = min(_sample(peer, 1) for _ in range(2))
    return max(1, int(sample_seconds / max(per_call, 1e-9)))


def measure(
    peers: list[Peer],
    *,
    sample_seconds: float = 2e-3,
    warmup_seconds: float = 0.05,
    budget_seconds: float = 2.0,
    min_rounds: int = 5,
    max_rounds: int = 31,
) -> dict[str, Stats]:
    """Median and p10–p90 per-call time of every peer, measured side by side."""
    inner = {p.name: _calibrate(p, sample_seconds, warmup_seconds) for p in peers}
    start = time.perf_counter()
    for p in peers:  # one timed round to size the rest
        _sample(p, inner[p.name])
    round_seconds = max(time.perf_counter() - start, 1e-9)
    rounds = int(min(max(budget_seconds / round_seconds, min_rounds), max_rounds))
    samples: dict[str, list[float]] = {p.name: [] for p in peers}
    for r in range(rounds):
        shift = r % len(peers)
        for p in peers[shift:] + peers[:shift]:
            samples[p.name].append(_sample(p, inner[p.name]))
    return {
        name: Stats(
            float(np.median(s)),
            float(np.percentile(s, 10)),
            float(np.percentile(s, 90)),
            s,
            inner[name],
        )
        for name, s in samples.items()
    }

"""Work units: participants grouped by token count, and the split of a selection into N shards."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.validators import Shard

from .shard_keys import _canonical

if TYPE_CHECKING:  # heavy imports (torch) stay out of `psystats merge`
    pass


# Default size of a --shard job's work units: the granularity at which an
# interrupted (preempted, timed-out) array task resumes.
DEFAULT_UNIT_TOKENS = 200_000


# ---------------------------------------------------------------------------
# Work units and the --shard I/N partition
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkUnit:
    """Participants scored together and written as one shard."""

    unit_id: str
    participant_keys: tuple[int, ...]
    n_tokens: int


def _keys_digest(keys: Iterable[int]) -> str:
    return hashlib.sha256(",".join(map(str, keys)).encode()).hexdigest()[:8]


def make_units(
    token_counts: Mapping[int, int], target_tokens: int, *, prefix: str = ""
) -> list[WorkUnit]:
    """Cut participants into work units of about ``target_tokens`` tokens each.

    Participants are taken in ``participant_key`` order (neighbours come from
    the same experiment, so a unit's transcripts have similar lengths and
    batch well) and a unit is closed before it would exceed the target; a
    participant longer than the target gets a unit of its own.  The result
    depends only on the counts, so every machine computes the same units.
    Unit ids are ``<prefix><index>-<digest of the keys>``: a unit with other
    participants never reuses another unit's file names.
    """
    if target_tokens < 1:
        raise ValueError("target_tokens must be positive")
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for key in sorted(token_counts):
        n = int(token_counts[key])
        if current and size + n > target_tokens:
            groups.append(current)
            current, size = [], 0
        current.append(key)
        size += n
    if current:
        groups.append(current)
    return [
        WorkUnit(
            unit_id=f"{prefix}{i:05d}-{_keys_digest(g)}",
            participant_keys=tuple(g),
            n_tokens=sum(int(token_counts[k]) for k in g),
        )
        for i, g in enumerate(groups)
    ]


def auto_unit_tokens(
    total_tokens: int,
    n_workers: int,
    *,
    units_per_worker: int = 8,
    minimum: int = 2_000,
    maximum: int = 2_000_000,
) -> int:
    """A unit size giving each worker several units (load balance, small retry cost)."""
    want = -(-max(total_tokens, 1) // max(1, n_workers * units_per_worker))
    return max(minimum, min(maximum, want))


def partition(token_counts: Mapping[int, int], n_shards: int) -> list[list[int]]:
    """Split participants into ``n_shards`` lists with nearly equal token totals.

    Longest-first greedy assignment (each participant, longest first, goes to
    the shard with the fewest tokens so far; ties by participant key and
    shard index), which keeps the largest shard within one participant of
    the mean.  Deterministic: every array task computes the same partition
    from the same counts, so task ``I`` of ``N`` needs no coordination.
    """
    if n_shards < 1:
        raise ValueError("n_shards must be at least 1")
    heap = [(0, i) for i in range(n_shards)]
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for key in sorted(token_counts, key=lambda k: (-int(token_counts[k]), k)):
        load, i = heapq.heappop(heap)
        shards[i].append(key)
        heapq.heappush(heap, (load + int(token_counts[key]), i))
    return [sorted(s) for s in shards]


def parse_shard_spec(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (I is 0-based, like ``--array=0-(N-1)``)."""
    try:
        return Shard()(spec)
    except ValueError as e:
        raise WarehouseError(f"--shard {e}") from None


def partition_digest(token_counts: Mapping[int, int]) -> str:
    """Hash of the (participant, tokens) list a partition was computed from.

    Every task of an array records it, and ``merge`` refuses a set of tasks
    that saw different participants (e.g. the warehouse was re-ingested
    between tasks), because their partitions would overlap and leave gaps.
    """
    items = sorted((int(k), int(v)) for k, v in token_counts.items())
    return hashlib.sha256(_canonical(items).encode()).hexdigest()[:16]

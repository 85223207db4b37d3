"""Scoring on a Ray cluster: one actor per GPU, work units balanced by tokens, shards merged by the driver.

Why Ray actors (and not Ray Data)
---------------------------------
Loading a language model takes far longer than scoring one participant, so
each worker must keep its model loaded and be fed unit after unit: that is
exactly a Ray *actor* (one per GPU, ``num_gpus=1``).  The scoring itself is
the single-machine ``scoring.engine.Scorer``; nothing here computes a score.
Ray Data's ``map_batches`` would also keep models in actors, but it re-batches
rows by count, not by tokens, and hides the unit boundaries that make shards,
manifests and resumption simple.  Ray's own fault tolerance does the retrying:
actors are created with ``max_restarts`` and ``max_task_retries``, so a
worker that dies mid-unit (OOM-killer, lost node, segfault) is restarted, its
model reloaded, and the unit run again.  If an actor runs out of restarts,
the driver gives its unit to another actor.

The driver
----------
Only the driver touches DuckDB.  It loads the participants, asks the actors
for the scorer's settings, fingerprints and token counts (so the driver
itself needs no GPU and never loads the model), opens or resumes the run with
``scoring.runs.start_run``, cuts the pending participants into units of about
``unit_tokens`` tokens, and sends them to the actors, largest first.  Each
finished unit comes back through Ray's object store (no shared filesystem
needed), is written as a Parquet shard under ``out_dir`` (the checkpoint) and
merged at once with ``scoring.runs.write_batch`` (idempotent).  If the driver
itself dies, rerunning the same command first merges the shards already on
disk and then scores only what is still missing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.db import Target
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.progress import Reporter

from . import shard_files, shard_keys, shard_merge, shard_units

if TYPE_CHECKING:
    from psystats.scoring.engine import ModelScorer, ScoreBatch
    from psystats.scoring.inputs import ParticipantInput

# How often a unit is handed to a new actor after the actor running it died
# for good (Ray's own max_task_retries restarts come first).
DEFAULT_UNIT_ATTEMPTS = 3


class ScoringWorker:
    """A Ray actor holding one loaded ``Scorer``.  Used as ``ray.remote(ScoringWorker)``.

    ``factory`` is a picklable zero-argument callable returning a Scorer (for
    example ``functools.partial(Scorer, model_row, **settings)``); it runs in
    the actor, so the model is loaded on the worker's GPU, and runs again if
    Ray restarts the actor.
    """

    def __init__(self, factory: Callable[[], ModelScorer], cpu_threads: int | None = None):
        if cpu_threads:
            import torch

            torch.set_num_threads(cpu_threads)
        self.scorer = factory()

    def describe(self) -> dict:
        import socket

        return {
            "settings": self.scorer.settings,
            "fingerprints": self.scorer.fingerprints,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def count_tokens(self, participants: Sequence[ParticipantInput]) -> list[int]:
        return [int(self.scorer.count_tokens(p)) for p in participants]

    def score(self, unit_id: str, participants: Sequence[ParticipantInput]) -> dict:
        t0 = time.perf_counter()
        batch = self.scorer.score(participants)
        return {
            "unit_id": unit_id,
            "batch": batch,
            "seconds": time.perf_counter() - t0,
            "pid": os.getpid(),
        }


@dataclass
class Progress:
    """The driver's view of a distributed run, passed to the ``progress`` callback."""

    units_total: int
    tokens_total: int
    units_done: int = 0
    tokens_done: int = 0
    rows_added: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        rate = self.tokens_per_second
        return (self.tokens_total - self.tokens_done) / rate if rate > 0 else None


def report_to(reporter: Reporter) -> Callable[[Progress], None]:
    """A ``progress`` callback that shows the run on the one reporter (``warehouse.progress``).

    The reporter's clock starts when the units start (not while Ray starts
    and the actors load the model), and it advances by tokens per finished unit.
    """

    def update(p: Progress) -> None:
        if not reporter.running:
            reporter.start(since=p.started)
        reporter.set_total(p.tokens_total)
        reporter.advance(p.tokens_done - reporter.done)

    return update


@dataclass
class RayRunResult:
    run_id: int
    already_complete: bool
    run_dir: str
    units: int = 0
    participants: int = 0
    rows_added: int = 0
    resumed_units: int = 0
    retries: int = 0
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0


def _ensure_ray(address: str | None, init_kwargs: Mapping[str, Any] | None) -> bool:
    """Connect to (or start) Ray; True if this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = {"log_to_driver": True, **dict(init_kwargs or {})}
    if address is None:
        kwargs.setdefault("include_dashboard", False)
    ray.init(address=address, **kwargs)
    return True


def _default_num_workers(num_gpus_per_worker: float, num_cpus_per_worker: float) -> int:
    import ray

    res = ray.cluster_resources()
    if num_gpus_per_worker > 0:
        n = int(res.get("GPU", 0) // num_gpus_per_worker)
        if n < 1:
            raise WarehouseError(
                f"the Ray cluster has {res.get('GPU', 0):g} GPUs; "
                f"--num-gpus-per-worker {num_gpus_per_worker:g} needs at least "
                f"that many (use --num-gpus-per-worker 0 for CPU workers)"
            )
        return n
    return max(1, int(res.get("CPU", 1) // max(num_cpus_per_worker, 1e-9)))


def _count_tokens(actors: list, participants: Sequence[ParticipantInput]) -> dict[int, int]:
    """Token counts of ``participants``, computed by the actors in parallel (round robin)."""
    import ray

    if not participants:
        return {}
    parts = [list(participants[i :: len(actors)]) for i in range(len(actors))]
    refs = [a.count_tokens.remote(part) for a, part in zip(actors, parts) if part]
    counts: dict[int, int] = {}
    for part, n in zip([p for p in parts if p], ray.get(refs)):
        counts.update({p.participant_key: c for p, c in zip(part, n)})
    return counts


def _merge_leftovers(con, run_id: int, rdir: Path) -> tuple[int, int]:
    """Merge shards a previous (crashed) driver wrote but may not have merged.

    Returns (units merged, rows added).  Damaged leftovers are deleted: their
    participants are still pending and get scored again.
    """
    units = added = 0
    for mpath in shard_files.finished_units(rdir).values():
        try:
            _, n_added, _ = shard_merge.merge_unit(con, run_id, mpath)
        except shard_keys.ShardError as e:
            print(f"[psystats ray] discarding damaged shard {mpath.name}: {e}", file=sys.stderr)
            mpath.unlink(missing_ok=True)
            continue
        units += 1
        added += n_added
    return units, added


def run_ray(
    db: Target,
    model: Mapping[str, Any],
    scorer_factory: Callable[[], ModelScorer],
    *,
    condition: str,
    selection: Mapping[str, Any] | None,
    inputs: Sequence[ParticipantInput],
    out_dir: str | os.PathLike,
    address: str | None = None,
    num_workers: int | None = None,
    num_gpus_per_worker: float = 1.0,
    num_cpus_per_worker: float = 1.0,
    unit_tokens: int | None = None,
    force: bool = False,
    max_restarts: int = 3,
    unit_attempts: int = DEFAULT_UNIT_ATTEMPTS,
    progress: Callable[[Progress], None] | None = None,
    ray_init_kwargs: Mapping[str, Any] | None = None,
) -> RayRunResult:
    """Score ``inputs`` with ``model`` on a Ray cluster and merge the results into the warehouse.

    ``db`` is the warehouse path, opened only for the moments the driver
    writes (start the run, merge a finished unit, close the run), so readers
    get the file while the cluster computes; or an open connection, used as is.

    ``scorer_factory`` builds the very Scorer single-machine scoring uses;
    it is called inside each actor.  ``address``: ``None`` starts a local Ray
    (or uses the one already initialised), ``"auto"`` joins the cluster this
    machine belongs to, ``"ray://host:10001"`` connects a remote client.
    ``num_workers`` defaults to every GPU (or CPU when
    ``num_gpus_per_worker=0``) the cluster has.  Shards are kept under
    ``out_dir/run-<hash>/`` (see ``scoring.shard_files``); ``force=True`` starts a
    new run and discards shards of the old one.
    """
    import ray

    from psystats.scoring.runs import finish_run, pending_participants, start_run

    t_start = time.monotonic()
    started_ray = _ensure_ray(address, ray_init_kwargs)
    actors: list = []
    try:
        n_workers = num_workers or _default_num_workers(num_gpus_per_worker, num_cpus_per_worker)
        n_workers = max(1, min(n_workers, len(inputs) or 1))
        cpu_threads = int(num_cpus_per_worker) if num_gpus_per_worker <= 0 else None
        Worker = ray.remote(ScoringWorker).options(
            num_gpus=num_gpus_per_worker,
            num_cpus=num_cpus_per_worker,
            max_restarts=max_restarts,
            max_task_retries=max_restarts,
        )
        actors = [Worker.remote(scorer_factory, cpu_threads) for _ in range(n_workers)]
        settings, fingerprints = _same_model_everywhere(actors)

        key = shard_keys.run_key(model, condition, selection, settings, fingerprints)
        rdir = shard_keys.run_dir(out_dir, key, settings)
        with warehouse_db.open(db, "write") as con:
            run_id, complete = start_run(
                con,
                dict(model),
                condition,
                dict(selection or {}),
                settings,
                fingerprints,
                force=force,
            )
        result = RayRunResult(run_id=run_id, already_complete=complete, run_dir=str(rdir))
        if complete and not force:
            return result
        if force:
            _discard_units(rdir)

        with warehouse_db.open(db, "write") as con:
            result.resumed_units, result.rows_added = _merge_leftovers(con, run_id, rdir)
            pending = pending_participants(con, run_id, list(inputs))
        token_counts = _count_tokens(actors, pending)
        total_tokens = sum(token_counts.values())
        target = unit_tokens or shard_units.auto_unit_tokens(total_tokens, n_workers)
        units = shard_units.make_units(token_counts, target, prefix="ray-")
        keep = max(1, len(units))  # fewer units than workers: free the GPUs
        for extra in actors[keep:]:
            ray.kill(extra)
        actors = actors[:keep]

        dispatch = _Dispatch(db, run_id, rdir, key, pending, actors, unit_attempts)
        state = Progress(units_total=len(units), tokens_total=total_tokens)
        try:
            dispatch.run(units, state, progress)
        except BaseException as e:
            # Units still in flight die with their actors (killed below).
            if not isinstance(e, KeyboardInterrupt):
                with warehouse_db.open(db, "write") as con:
                    _fail_run(con, run_id, shard_merge.sum_counts(dispatch.unit_counts), e)
            raise

        result.counts = shard_merge.sum_counts(dispatch.unit_counts)
        with warehouse_db.open(db, "write") as con:
            finish_run(con, run_id, result.counts, status="complete")
        result.units = len(units)
        result.participants = len(pending)
        result.rows_added += state.rows_added
        result.retries = state.retries
        result.seconds = time.monotonic() - t_start
        return result
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
        if started_ray:
            ray.shutdown()


def _same_model_everywhere(actors: list) -> tuple[dict, dict]:
    """The settings and fingerprints every actor loaded; an error if they differ.

    Every actor must see the same model: a node with other weights or another
    tokenizer would silently mix two models' scores in one run.
    """
    import ray

    try:
        described = ray.get([a.describe.remote() for a in actors])
    except ray.exceptions.RayActorError as e:
        raise WarehouseError(f"a Ray worker could not load the model: {e}") from None
    first = described[0]
    for d in described[1:]:
        if d["settings"] != first["settings"] or d["fingerprints"] != first["fingerprints"]:
            raise WarehouseError(
                f"Ray worker on {d['host']} loaded a different model or settings than "
                f"{first['host']} ({d['fingerprints']} vs {first['fingerprints']}): "
                f"make every node see the same model files"
            )
    return first["settings"], first["fingerprints"]


class _Dispatch:
    """Units to actors, largest first; each finished unit written as a shard and merged.

    Skip counts (persona without metadata, ...) come from this pass only:
    skipped participants have no scores, so they are pending again on every
    pass (see scoring.runs).  write_batch adds the others.
    """

    def __init__(self, db: Target, run_id: int, rdir: Path, key: dict, pending, actors, attempts):
        self.db, self.run_id, self.rdir, self.key = db, run_id, rdir, key
        self.by_key = {p.participant_key: p for p in pending}
        self.idle = list(actors)
        self.max_attempts = attempts
        self.attempts: dict[str, int] = {}
        self.in_flight: dict[Any, tuple[Any, shard_units.WorkUnit]] = {}
        self.queue: list[shard_units.WorkUnit] = []
        self.unit_counts: list[dict] = []

    def submit(self) -> None:
        while self.idle and self.queue:
            actor, unit = self.idle.pop(0), self.queue.pop(0)
            self.attempts[unit.unit_id] = self.attempts.get(unit.unit_id, 0) + 1
            participants = [self.by_key[k] for k in unit.participant_keys]
            self.in_flight[actor.score.remote(unit.unit_id, participants)] = (actor, unit)

    def run(self, units, state: Progress, progress: Callable[[Progress], None] | None) -> None:
        import ray

        # Largest first: the long units start early and the small ones fill the gaps.
        self.queue = sorted(units, key=lambda u: (-u.n_tokens, u.unit_id))
        self.submit()
        while self.in_flight:
            done, _ = ray.wait(list(self.in_flight), num_returns=1)
            actor, unit = self.in_flight.pop(done[0])
            try:
                out = ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                self._retry(unit, state, e)
                continue
            self._merge(unit, out, state)
            self.idle.append(actor)
            self.submit()
            if progress:
                progress(state)

    def _retry(self, unit: shard_units.WorkUnit, state: Progress, e: BaseException) -> None:
        """The actor used up its restarts: retire it, give the unit to another."""
        state.retries += 1
        if self.attempts[unit.unit_id] >= self.max_attempts:
            raise WarehouseError(
                f"work unit {unit.unit_id} ({len(unit.participant_keys)} "
                f"participants, {unit.n_tokens:,} tokens): its worker died for good "
                f"{self.attempts[unit.unit_id]} times (after Ray's restarts); last error: {e}"
            ) from None
        self.queue.insert(0, unit)
        if not self.idle and not self.in_flight:
            raise WarehouseError("every Ray worker died; see the Ray logs") from None
        self.submit()

    def _merge(self, unit: shard_units.WorkUnit, out: dict, state: Progress) -> None:
        batch: ScoreBatch = out["batch"]
        participants = [self.by_key[k] for k in unit.participant_keys]
        mpath = shard_files.manifest_path(self.rdir, unit.unit_id)
        shard_files.write_shard(
            self.rdir, self.key, unit, batch, participants, seconds=out["seconds"]
        )
        with warehouse_db.open(
            self.db, "write"
        ) as con:  # the file is open only while a unit is merged
            _, added, _ = shard_merge.merge_unit(con, self.run_id, mpath)
        self.unit_counts.append(batch.counts or {})
        state.units_done += 1
        state.tokens_done += unit.n_tokens
        state.rows_added += added


def _fail_run(con, run_id: int, counts: dict, error: BaseException) -> None:
    """Mark the run failed (a rerun resumes it); never hide the original error."""
    from psystats.scoring.runs import finish_run

    try:
        finish_run(con, run_id, counts, status="failed", error=str(error)[:2000])
    except Exception:
        pass


def _discard_units(rdir: Path) -> None:
    """Remove an old run's unit files before a ``force`` rerun of the same run key."""
    for p in rdir.glob("unit-*"):
        p.unlink(missing_ok=True)
    for p in rdir.glob("shard-*.done.json"):
        p.unlink(missing_ok=True)

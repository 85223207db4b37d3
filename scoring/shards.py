"""Score shards: Parquet files of finished work units, and merging them into the warehouse.

This module gathers the public names of five small ones, one job each:
``shard_keys`` (run keys, run folders, the file format's basics),
``shard_units`` (work units and the I/N partition), ``shard_files`` (writing
and verifying one unit's files), ``shard_merge`` (merging into the warehouse)
and ``shard_job`` (one ``--shard I/N`` task).

Distributed scoring (Ray, or SLURM job arrays with ``--shard I/N``) never lets
a worker write the DuckDB file.  Each *work unit* (a group of participants
balanced by token count) is scored by the ordinary single-machine
``scoring.engine.Scorer`` and its result is written as a *shard*::

    DIR/run-<hash>/run.json                       the run key, readable
    DIR/run-<hash>/unit-<id>.scores.parquet       ScoreBatch.scores
    DIR/run-<hash>/unit-<id>.options.parquet      ScoreBatch.options (when non-empty)
    DIR/run-<hash>/unit-<id>.tokens.parquet       ScoreBatch.tokens  (with --token-level)
    DIR/run-<hash>/unit-<id>.manifest.json        what the unit holds, hashes, row counts
    DIR/run-<hash>/shard-<i>-of-<n>.done.json     a --shard job finished all its units

``<hash>`` is a hash of the *run key* (model, condition, selection, settings,
fingerprints): shards of the same run land in the same folder wherever they
were computed, and shards of different runs never mix.

Crash safety
------------
Every file is written to a temporary name and renamed into place, and the
manifest is written last: a unit counts as finished only when its manifest
exists and the hashes it records match the files.  A worker killed half-way
leaves at most stray temporary files, which are ignored and overwritten.

Merging (``merge_dir``, ``psystats merge DIR``) feeds each shard to
``scoring.runs.write_batch``, one transaction per unit, which skips rows the
warehouse already holds.  So a shard written twice is merged once, and a merge
interrupted half-way (killed, or stopped by a corrupt shard) is simply run
again.
"""

from __future__ import annotations

from .shard_files import (  # noqa: F401
    done_marker_path,
    finished_units,
    manifest_path,
    read_shard,
    text_sha256,
    unit_is_done,
    verify_manifest,
    write_shard,
)
from .shard_job import (  # noqa: F401
    ShardJobResult,
    _token_counts,
    run_shard,
)
from .shard_keys import (  # noqa: F401
    COLUMNS,
    FORMAT_VERSION,
    TABLES,
    ShardError,
    _canonical,
    _fsync_replace,
    _read_json,
    _write_json_atomic,
    run_dir,
    run_hash,
    run_key,
)
from .shard_merge import (  # noqa: F401
    RunMerge,
    _check_against_warehouse,
    _start_run_for_key,
    complete_shard_set,
    merge_dir,
    merge_run_dir,
    merge_unit,
    resolve_model_read_only,
    sum_counts,
)
from .shard_units import (  # noqa: F401
    DEFAULT_UNIT_TOKENS,
    WorkUnit,
    _keys_digest,
    auto_unit_tokens,
    make_units,
    parse_shard_spec,
    partition,
    partition_digest,
)

"""Property-based fuzzing of the record parser and of ingest (issue 11, item 2).

Any JSON value in any field, any byte string as a line: the result is either
an exact ingest (checked against an independent regex reading of the text) or
a ``WarehouseError`` naming file, line and field with the warehouse exactly
as it was.  Never another exception, never a partial write.

The fast suite runs a fixed, derandomised budget; the ``slow`` variants run
many more examples (``PSYSTATS_FUZZ_EXAMPLES`` overrides both).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.ingest import ingest_file
from psystats.warehouse.sources import SourceFile, decode_line
from psystats.warehouse.transcript import RecordError, parse_record

FAST = int(os.environ.get("PSYSTATS_FUZZ_EXAMPLES", 0)) or None
COMMON = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "NA", "nan", "None", " 12 ", "1.0", "1e999", "\ud800", "<<", ">>"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
transcripts = st.lists(
    st.one_of(st.text(max_size=12), st.sampled_from(["<<", ">>", "<<a>>", "<<1>> ", "\n"])),
    max_size=8,
).map("".join)
records = st.fixed_dictionaries(
    {},
    optional={
        "text": transcripts | json_values,
        "experiment": json_values | st.sampled_from(["e1", "e2", 1, 1.0, "1"]),
        "participant": json_values | st.integers(0, 3) | st.sampled_from(["1", 1.0, " 2 "]),
        "RTs": json_values | st.lists(json_scalars, max_size=4),
        "age": json_values,
        "gender": json_values,
        "extra": json_values,
    },
)
lines = st.one_of(
    records.map(lambda r: json.dumps(r).encode()),  # ASCII escapes carry any code point
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
)


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    tables = [
        t
        for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' ORDER BY 1"
        ).fetchall()
    ]
    return {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}


# ----------------------------------------------------------------- the parser


def _check_parse(raw: bytes) -> None:
    rec = decode_line(raw)
    if isinstance(rec, Exception):
        assert rec.field == "<line>" and rec.message
        return
    try:
        p = parse_record(rec)
    except RecordError as e:
        assert e.field and e.message
        return
    # Accepted: responses are exactly what a plain regex finds between markers.
    assert p.responses == re.findall(r"<<(.*?)>>", rec["text"], flags=re.S)
    assert p.experiment == p.experiment.strip() and p.experiment
    assert p.participant == p.participant.strip() and p.participant
    json.dumps(p.metadata, ensure_ascii=False).encode("utf-8")  # storable as UTF-8 JSON
    assert p.rts is None or len(p.rts) == len(p.spans)


@settings(max_examples=FAST or 60, **COMMON)
@given(lines)
def test_parser_accepts_exactly_or_names_the_field(raw):
    _check_parse(raw)


@pytest.mark.slow
@settings(max_examples=FAST or 3000, **COMMON)
@given(lines)
def test_parser_fuzz_long(raw):
    _check_parse(raw)


# ----------------------------------------------------------------- ingest


@pytest.fixture(scope="module")
def fuzz_con(tmp_path_factory):
    """One warehouse for every example; each example is its own study."""
    con = warehouse_db.open(tmp_path_factory.mktemp("fuzz") / "w.duckdb", "write", create=True)
    yield con
    con.close()


_study_ids = itertools.count()


def _check_ingest(con, folder: Path, body: list[bytes], skip_bad: bool) -> None:
    study = f"s{next(_study_ids)}"
    path = folder / f"{study}.jsonl"
    path.write_bytes(b"\n".join(body) + b"\n")
    before = _snapshot(con)
    src = SourceFile(path, study)
    try:
        result = ingest_file(con, src, skip_bad=skip_bad)
    except WarehouseError as e:
        assert not skip_bad
        assert re.match(rf"{re.escape(str(path))}:\d+: field '[^']*': .", str(e)), str(e)
        assert _snapshot(con) == before  # nothing written, not even the ingests row
        return
    # Accepted lines are exactly the lines the parser accepts, in full.
    expected = []
    for raw in b"\n".join(body).split(b"\n"):
        if not raw.strip():
            continue
        rec = decode_line(raw)
        try:
            p = None if isinstance(rec, Exception) else parse_record(rec)
        except RecordError:
            p = None
        if p is not None:
            expected.append(p)
    if not skip_bad:
        assert result.rejected == []
    keys = {(p.experiment, p.participant) for p in expected}
    got = con.execute(
        "SELECT experiment, participant, list(text ORDER BY response_index) FILTER "
        "(WHERE text IS NOT NULL) FROM participants LEFT JOIN responses "
        "USING (participant_key, study, experiment, participant) WHERE study = ? GROUP BY ALL",
        [study],
    ).fetchall()
    assert {(e, p) for e, p, _ in got} == keys
    first = {}
    for p in expected:
        first.setdefault((p.experiment, p.participant), p)
    for e, part, texts in got:
        assert (texts or []) == first[(e, part)].responses
    n_lines = sum(1 for raw in b"\n".join(body).split(b"\n") if raw.strip())
    dupes = len(expected) - len(keys)
    assert (
        result.participants_added + len(result.rejected) + result.participants_unchanged == n_lines
    )
    assert result.participants_added == len(keys)
    assert len(result.rejected) + result.participants_unchanged == n_lines - len(keys)
    assert dupes >= 0


@settings(max_examples=FAST or 15, **COMMON)
@given(body=st.lists(lines, min_size=1, max_size=4), skip_bad=st.booleans())
def test_ingest_is_exact_or_a_clean_error(fuzz_con, tmp_path_factory, body, skip_bad):
    _check_ingest(fuzz_con, tmp_path_factory.mktemp("f", numbered=True), body, skip_bad)


@pytest.mark.slow
@settings(max_examples=FAST or 400, **COMMON)
@given(body=st.lists(lines, min_size=1, max_size=6), skip_bad=st.booleans())
def test_ingest_fuzz_long(fuzz_con, tmp_path_factory, body, skip_bad):
    _check_ingest(fuzz_con, tmp_path_factory.mktemp("f", numbered=True), body, skip_bad)

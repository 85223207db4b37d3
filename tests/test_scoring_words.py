"""Per-token entropy and rank, per-word scores and the beginning-of-word correction,
against an independent float64 reference.

The reference is written here from the definitions, sharing no code with the
engine: the transcript's pieces tokenised one by one (``helpers.reference_ids``),
one plain ``model(input_ids)`` forward in float64, then Python loops over
full-vocabulary logits: entropy ``-sum p log p``, rank ``1 + #{v: logit_v >
logit_human}``, words as runs of non-space characters found character by
character, tokens mapped to words by their offsets, and the beginning-of-word
vocabulary read from GPT-2's byte-level alphabet (not by decoding, as the
engine does).

Tolerances: the float64 engine agrees to 1e-8 (both are float64 sums of the
same numbers in another order).  The float32 engine (the default dtype)
agrees to 1e-4 nats per token, the bound the other scoring tests use for
float32 against float64 (float32 logits carry ~1e-7 relative error; a
log-softmax over 49k entries and a sum of a few tokens stay far below 1e-4);
a float32 rank may differ only where a float64 logit lies within 1e-3 of the
human token's.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from helpers import load64, model_row, reference_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Several-token words, a double space, punctuation glued to words, non-ASCII
# (multi-byte) words, a one-word response, and a response that ends the text.
TEXT = (
    "Trial 1: describe the colour. You say <<I think  it's red, très bien!>>. "
    "Trial 2: name a dish. You say <<naïve café 日本語>> and press <<J>>. "
    "Last, say anything: <<ok then>>"
)


def _participant():
    from psystats.scoring.inputs import ParticipantInput

    spans = tuple(m.span(1) for m in re.finditer(r"<<(.*?)>>", TEXT))
    return ParticipantInput(7, "e", TEXT, tuple(range(100, 100 + len(spans))), spans)


def _pieces(p):
    out, pos = [], 0
    for i, (a, b) in enumerate(p.spans):
        out.append((p.text[pos:a], -1))
        out.append((p.text[a:b], i))
        pos = b
    out.append((p.text[pos:], -1))
    return [(t, r) for t, r in out if t or r >= 0]


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character alphabet, written out from its definition."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in chars.items()}


def _reference_bow(tokenizer, vocab: int) -> np.ndarray:
    dec = _gpt2_byte_decoder()
    out = np.zeros(vocab, bool)
    special = set(tokenizer.all_special_ids)
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in special or not all(c in dec for c in piece):
            continue
        text = bytes(dec[c] for c in piece).decode("utf-8", errors="replace")
        out[i] = text[:1].isspace()
    out[tokenizer.eos_token_id] = True
    return out


def _reference(model64, tokenizer, p, bos):
    """Per-token (lp, entropy, rank, log bow mass, logits) and per-word rows, from definitions."""
    ids, where = reference_ids(tokenizer, _pieces(p), bos)
    with torch.no_grad():
        logits = model64(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    bow = torch.as_tensor(_reference_bow(tokenizer, logits.shape[-1]))
    tokens, words = {}, {}
    for r, rid in enumerate(p.response_ids):
        s, e = where[r]
        rows = []
        for t in range(s, e):
            lp = float(logp[t - 1, ids[t]])
            ent = float(-(logp[t - 1].exp() * logp[t - 1]).sum())
            rank = 1 + int((logits[t - 1] > logits[t - 1, ids[t]]).sum())
            bow_lp = float(torch.logsumexp(logp[t - 1][bow], -1))
            rows.append((lp, ent, rank, bow_lp, logits[t - 1], ids[t]))
        tokens[rid] = rows
        # Words, character by character.
        text = p.responses[r]
        spans, start = [], None
        for i, ch in enumerate(text + " "):
            if not ch.isspace() and start is None:
                start = i
            elif ch.isspace() and start is not None:
                spans.append((start, i))
                start = None
        offs = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offs = offs["offset_mapping"]
        assert len(offs) == e - s
        owner = []
        for a, b in offs:
            first = next((i for i in range(a, b) if not text[i].isspace()), None)
            if first is None:  # whitespace only: the next word's separator
                k = next((k for k, (wa, _) in enumerate(spans) if wa >= b), len(spans) - 1)
            else:
                k = next(k for k, (wa, wb) in enumerate(spans) if wa <= first < wb)
            owner.append(k)
        wrows = []
        for k, (wa, wb) in enumerate(spans):
            mine = [j for j, o in enumerate(owner) if o == k]
            plain = -sum(rows[j][0] for j in mine)
            corrected = plain
            if mine and mine[-1] + 1 < len(rows):  # the word ends inside the response
                corrected -= rows[mine[-1] + 1][3]
            if mine and mine[0] > 0:  # the word starts inside the response
                corrected += rows[mine[0]][3]
            wrows.append(
                (text[wa:wb], wa, wb, mine[0] if mine else None, len(mine), corrected, plain)
            )
        words[rid] = wrows
    return tokens, words


@pytest.fixture(scope="module")
def setup(tiny_models):
    from psystats.scoring.engine import Scorer

    path = tiny_models["llama"]
    sc64 = Scorer(model_row(path), dtype="float64", entropy=True, rank=True, word_level=True)
    p = _participant()
    ref = _reference(load64(path), sc64.tokenizer, p, sc64.prefix_ids)
    return path, sc64, p, ref


def _by_response(table):
    out: dict[int, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["response_id"], []).append(row)
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_token_entropy_and_rank_match_float64_reference(setup, dtype):
    from psystats.scoring.engine import Scorer

    path, sc64, p, (ref_tokens, _) = setup
    sc = (
        sc64
        if dtype == "float64"
        else Scorer(
            model_row(path), dtype="float32", entropy=True, rank=True, tokenizer=sc64.tokenizer
        )
    )
    assert sc.token_level  # --entropy / --rank store the token level
    got = _by_response(sc.score([p]).tokens)
    tol = 1e-8 if dtype == "float64" else 1e-4
    assert set(got) == set(ref_tokens)
    for rid, rows in ref_tokens.items():
        assert [g["token_index"] for g in got[rid]] == list(range(len(rows)))
        for g, (lp, ent, rank, _bow, logits, tok) in zip(got[rid], rows):
            assert g["token_id"] == tok
            assert g["logprob"] == pytest.approx(lp, abs=tol)
            assert g["entropy"] == pytest.approx(ent, abs=tol)
            if dtype == "float64":
                assert g["rank"] == rank
            else:
                lo = 1 + int((logits > logits[tok] + 1e-3).sum())
                hi = 1 + int((logits > logits[tok] - 1e-3).sum())
                assert lo <= g["rank"] <= hi
    # The response that ends the text is scored like the others (last position of the input).
    assert len(got[p.response_ids[-1]]) == len(ref_tokens[p.response_ids[-1]]) >= 2


def test_token_columns_stay_null_unless_asked(setup):
    from psystats.scoring.engine import Scorer

    path, sc64, p, _ = setup
    sc = Scorer(model_row(path), dtype="float64", token_level=True, tokenizer=sc64.tokenizer)
    rows = sc.score([p]).tokens.to_pylist()
    assert rows and all(r["entropy"] is None and r["rank"] is None for r in rows)
    assert "token_entropy" not in sc.settings and "word_level" not in sc.settings


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_word_scores_match_float64_reference(setup, dtype):
    from psystats.scoring.engine import Scorer

    path, sc64, p, (_, ref_words) = setup
    sc = (
        sc64
        if dtype == "float64"
        else Scorer(model_row(path), dtype="float32", word_level=True, tokenizer=sc64.tokenizer)
    )
    got = _by_response(sc.score([p]).words)
    tol = 1e-8 if dtype == "float64" else 1e-4
    assert set(got) == set(ref_words)
    n_multi = 0
    for rid, wrows in ref_words.items():
        assert [g["word_index"] for g in got[rid]] == list(range(len(wrows)))
        for g, (word, a, b, first, n, corrected, plain) in zip(got[rid], wrows):
            assert (g["word"], g["char_start"], g["char_end"]) == (word, a, b)
            assert (g["token_start"], g["n_tokens"]) == (first, n)
            assert g["token_nll"] == pytest.approx(plain, abs=tol)
            assert g["nll"] == pytest.approx(corrected, abs=tol)
            n_multi += n > 1
    words = [w[0] for rows in ref_words.values() for w in rows]
    # What the transcript was built to cover.
    assert {"it's", "red,", "bien!", "naïve", "日本語", "J", "then"} <= set(words)
    assert n_multi >= 4


def test_bow_correction_moves_mass_between_words_only(setup):
    """The correction changes a word's NLL only by the beginning-of-word mass at its two
    edges: word log-probabilities of a response telescope to its token log-probability
    (Pimentel & Meister 2024, eq. for bow-marked vocabularies), with the response's own
    edges carrying no term."""
    from psystats.scoring.engine import Scorer

    path, sc64, p, (ref_tokens, _) = setup
    batch = sc64.score([p])
    nll = {r["response_id"]: r["nll"] for r in batch.scores.to_pylist()}
    words = _by_response(batch.words)
    plain = Scorer(
        model_row(path),
        dtype="float64",
        word_level=True,
        bow_correction=False,
        tokenizer=sc64.tokenizer,
        lm=sc64.lm,
    )
    assert plain.settings["word_level"]["bow_correction"] is False
    uncorrected = _by_response(plain.score([p]).words)
    for rid, ws in words.items():
        assert sum(w["nll"] for w in ws) == pytest.approx(nll[rid], abs=1e-9)
        assert sum(w["token_nll"] for w in ws) == pytest.approx(nll[rid], abs=1e-9)
        for w, u in zip(ws, uncorrected[rid]):
            assert u["nll"] == u["token_nll"] == pytest.approx(w["token_nll"], abs=1e-12)
        bow = [row[3] for row in ref_tokens[rid]]
        for k, w in enumerate(ws):
            end = w["token_start"] + w["n_tokens"]
            want = (-bow[end] if k + 1 < len(ws) else 0.0) + (bow[w["token_start"]] if k else 0.0)
            assert w["nll"] - w["token_nll"] == pytest.approx(want, abs=1e-8)
        if len(ws) == 1:  # a one-word response: its word NLL is its response NLL
            assert ws[0]["nll"] == pytest.approx(nll[rid], abs=1e-9)
    # The correction did change something: interior boundaries carry real mass.
    assert any(abs(w["nll"] - w["token_nll"]) > 1e-3 for ws in words.values() for w in ws)


def test_word_level_whole_tokenization_uses_the_same_words(setup):
    from psystats.scoring.engine import Scorer

    path, sc64, p, (_, ref_words) = setup
    sc = Scorer(
        model_row(path),
        dtype="float64",
        word_level=True,
        tokenization="whole",
        tokenizer=sc64.tokenizer,
        lm=sc64.lm,
    )
    got = _by_response(sc.score([p]).words)
    for rid, wrows in ref_words.items():
        assert [(g["word"], g["char_start"], g["char_end"]) for g in got[rid]] == [
            w[:3] for w in wrows
        ]
        assert all(g["n_tokens"] >= 1 and math.isfinite(g["nll"]) for g in got[rid])


def test_words_and_token_map_rules():
    from psystats.scoring.words import assign_tokens, split_words, word_ranges

    text = " a  bc, d\n"
    words = split_words(text)
    assert [text[a:b] for a, b in words] == ["a", "bc,", "d"]
    # ' a' | ' ' | ' bc' | ',' | ' d' | '\n'  (whitespace-only ' ' goes to the next word,
    # trailing whitespace to the last word)
    offsets = np.asarray([[0, 2], [2, 3], [3, 6], [6, 7], [7, 9], [9, 10]])
    owner = assign_tokens(text, words, offsets)
    assert owner.tolist() == [0, 1, 1, 1, 2, 2]
    first, end = word_ranges(owner, len(words))
    assert first.tolist() == [0, 1, 4] and end.tolist() == [1, 4, 6]
    assert split_words("   ") == []


def test_slow_tokenizer_and_non_bow_tokenizer_are_refused(setup):
    from psystats.scoring.errors import ScoringError
    from psystats.scoring.words import check_bow_tokenizer, check_offsets

    _, sc64, _, _ = setup

    class Slow:
        is_fast = False

    with pytest.raises(ScoringError, match="fast"):
        check_offsets(Slow(), "m")
    nothing_is_bow = np.zeros(len(sc64.tokenizer), bool)
    with pytest.raises(ScoringError, match="--no-bow-correction"):
        check_bow_tokenizer(sc64.tokenizer, nothing_is_bow, "m")


def test_real_transcripts_stored_and_exported_by_word(setup, inputs, warehouse_copy, tmp_path):
    """Real Psych-201 responses (single letters, free-text association lists): the
    batch is written by ``runs.write_batch`` into a real warehouse and exported by the CLI."""
    import pyarrow.parquet as pq

    from helpers import cli_ok
    from psystats.scoring.runs import finish_run, start_run, write_batch
    from psystats.warehouse import db as warehouse_db

    _, sc64, _, _ = setup
    inputs = [inputs[0], inputs[-1]]  # franke's letters, one free-text participant
    batch = sc64.score(inputs)
    con = warehouse_db.open(warehouse_copy, "write", create=True)
    run, _ = start_run(con, sc64.model_row, "plain", {}, sc64.settings, {})
    assert write_batch(con, run, batch) == batch.scores.num_rows
    assert write_batch(con, run, batch) == 0  # idempotent: nothing twice
    finish_run(con, run)
    rows = con.execute(
        "SELECT s.response_id, s.nll, r.text, list(w.word ORDER BY w.word_index), sum(w.nll) "
        "FROM scores s JOIN responses r USING (response_id) "
        "LEFT JOIN word_scores w ON w.run_id = s.run_id AND w.response_id = s.response_id "
        "WHERE s.run_id = ? GROUP BY ALL",
        [run],
    ).fetchall()
    n_tok = con.execute(
        "SELECT count(*) FROM token_scores WHERE run_id = ? AND rank >= 1 AND entropy > 0", [run]
    ).fetchall()[0][0]
    con.close()
    assert n_tok == int(np.sum(batch.scores["n_tokens"].to_numpy(zero_copy_only=False)))
    multi = 0
    for _rid, nll, text, words, total in rows:
        assert [w for w in words if w is not None] == text.split()
        if text.split():
            assert total == pytest.approx(nll, abs=1e-8)
        multi += len(text.split()) > 1
    assert multi > 0  # the free-text study has several words per response

    out = tmp_path / "words.parquet"
    res = cli_ok(
        "--db", warehouse_copy, "scores", "export", "--run", run, "--level", "word", "-o", out
    )
    t = pq.read_table(out)
    assert f"wrote {t.num_rows} word scores from run {run}" in res.output
    assert t.num_rows == batch.words.num_rows
    # The notebook API reads the same rows.
    import psystats as ps

    wh = ps.open(warehouse_copy)
    api_words = wh.word_scores(run)
    assert api_words.columns.tolist() == t.column_names
    for col in ("response_id", "word", "nll", "token_nll"):
        assert api_words[col].tolist() == t[col].to_pylist()
    tokens = wh.token_scores(run)
    assert len(tokens) == n_tok and (tokens["rank"] >= 1).all()
    assert t.column_names[:9] == [
        "run_id",
        "model",
        "condition",
        "scorer",
        "response_id",
        "study",
        "experiment",
        "participant",
        "response_index",
    ]


@pytest.mark.slow
def test_cli_scores_and_exports_token_and_word_levels(tiny_models, psych201, tmp_path):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from helpers import cli_base_warehouse, cli_ok
    from psystats.cli import main
    from psystats.warehouse import db as warehouse_db

    db = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    cli_ok("--db", db, "score", "--model", "tiny-qwen3", "--study", "franke2024bayesian", "-q")
    cli_ok(
        "--db", db, "score", "--model", "tiny-qwen3", "--word-level", "--entropy", "--rank", "-q"
    )
    con = warehouse_db.open(db)
    plain_run, run = (
        r for (r,) in con.execute("SELECT run_id FROM score_runs ORDER BY 1").fetchall()
    )
    n_words = con.execute("SELECT count(*) FROM word_scores WHERE run_id = ?", [run]).fetchall()[0][
        0
    ]
    n_tokens = con.execute(
        "SELECT count(*) FROM token_scores WHERE run_id = ? AND entropy IS NOT NULL AND rank >= 1",
        [run],
    ).fetchall()[0][0]
    # Word NLLs of a response sum to its response NLL (the correction only moves mass).
    worst = con.execute(
        "SELECT max(abs(w.s - s.nll)) FROM (SELECT response_id, sum(nll) AS s FROM word_scores "
        "WHERE run_id = ? GROUP BY 1) w JOIN scores s USING (response_id) WHERE s.run_id = ?",
        [run, run],
    ).fetchall()[0][0]
    con.close()
    assert n_words > 0 and n_tokens > 0 and worst < 1e-9

    words_csv, tokens_pq = tmp_path / "w.csv", tmp_path / "t.parquet"
    res = cli_ok("--db", db, "scores", "export", "--run", run, "--level", "word", "-o", words_csv)
    assert f"wrote {n_words} word scores from run {run}" in res.output
    w = pcsv.read_csv(words_csv)
    assert w.num_rows == n_words and {"participant", "word", "nll", "token_nll"} <= set(
        w.column_names
    )
    cli_ok("--db", db, "scores", "export", "--run", run, "--level", "token", "-o", tokens_pq)
    t = pq.read_table(tokens_pq)
    assert t.num_rows == n_tokens and t["rank"].null_count == 0

    res = CliRunner().invoke(
        main,
        [
            "--db",
            str(db),
            "scores",
            "export",
            "--run",
            str(plain_run),
            "--level",
            "word",
            "-o",
            str(tmp_path / "x.csv"),
        ],
    )
    assert res.exit_code == 1 and "--word-level" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.csv").exists()


def test_shard_files_carry_token_and_word_columns(setup, tmp_path):
    """A --shard unit written and read back keeps entropy, rank and the word table."""
    from psystats.scoring.shard_files import read_shard, write_shard
    from psystats.scoring.shard_keys import run_dir, run_key
    from psystats.scoring.shard_units import WorkUnit

    _, sc64, p, _ = setup
    batch = sc64.score([p])
    key = run_key(sc64.model_row, "plain", {}, sc64.settings, {})
    rdir = run_dir(tmp_path, key, sc64.settings)
    unit = WorkUnit("u0", (p.participant_key,), 1)
    write_shard(rdir, key, unit, batch, [p])
    _, back = read_shard(rdir / "unit-u0.manifest.json")
    assert back.words is not None and back.tokens is not None
    assert back.words.equals(batch.words) and back.tokens.equals(batch.tokens)


@pytest.mark.parametrize(
    "opts",
    [{"condition": "chat"}, {"context_policy": "window", "max_context": 24, "stride": 8}],
    ids=["chat", "window"],
)
def test_words_under_chat_and_windows_add_up(setup, opts):
    """Chat turns and windowed transcripts: the same words, word token NLLs equal the sums
    of the stored token log-probabilities, and corrected word NLLs sum to the response NLL."""
    from psystats.scoring.engine import Scorer

    path, sc64, p, _ = setup
    sc = Scorer(
        model_row(path),
        dtype="float64",
        word_level=True,
        token_level=True,
        tokenizer=sc64.tokenizer,
        lm=sc64.lm,
        **opts,
    )
    batch = sc.score([p])
    if "max_context" in opts:
        assert batch.counts.get("windowed_participants") == 1
    nll = {r["response_id"]: r["nll"] for r in batch.scores.to_pylist()}
    tokens = _by_response(batch.tokens)
    for rid, ws in _by_response(batch.words).items():
        text = p.responses[p.response_ids.index(rid)]
        assert [w["word"] for w in ws] == text.split()
        lps = [t["logprob"] for t in tokens[rid]]
        for w in ws:
            a, n = w["token_start"], w["n_tokens"]
            assert w["token_nll"] == pytest.approx(-sum(lps[a : a + n]), abs=1e-9)
        assert sum(w["nll"] for w in ws) == pytest.approx(nll[rid], abs=1e-9)


@pytest.mark.parametrize("layout", ["duckdb", "parquet"])
def test_migration_keeps_old_token_rows_and_adds_word_table(tmp_path, monkeypatch, layout):
    """A warehouse from before MIGRATION_FINER_SCORES (either scores layout) upgrades:
    its token rows get NULL entropy/rank, new rows carry them, word_scores exists."""
    import pyarrow as pa

    from psystats.warehouse import db, parquet_layout, schema
    from psystats.warehouse.sql import transaction

    full = list(schema.MIGRATIONS)
    before = full.index(schema.MIGRATION_FINER_SCORES)
    path = tmp_path / "old.duckdb"
    with monkeypatch.context() as m:
        m.setattr(db, "MIGRATIONS", full[:before])
        m.setattr(db, "SCHEMA_VERSION", before)
        con = db.open(path, "write", create=True)
        if layout == "parquet":
            parquet_layout.enable(con)
        con.execute(
            "INSERT INTO score_runs (run_id, model, condition, scorer, psystats_version, "
            "started_at, status) VALUES (1, 'm', 'plain', 'psystats', 'x', now(), 'complete')"
        )
        old = pa.table(
            {
                "response_id": pa.array([5], pa.int64()),
                "token_index": pa.array([0], pa.int32()),
                "token_id": pa.array([3], pa.int32()),
                "token": ["a"],
                "logprob": [-1.0],
            }
        )
        con.register("_old", old)
        with transaction(con):
            parquet_layout.write_rows(con, "token_scores", 1, "_old", old.column_names)
        con.close()
    con = db.open(path, "write", create=True)
    assert db.schema_version(con) == len(full)
    new = (
        old.set_column(0, "response_id", pa.array([6], pa.int64()))
        .append_column("entropy", pa.array([1.5]))
        .append_column("rank", pa.array([2], pa.int32()))
    )
    con.register("_new", new)
    with transaction(con):
        parquet_layout.write_rows(con, "token_scores", 1, "_new", new.column_names)
    rows = con.execute(
        "SELECT response_id, logprob, entropy, rank FROM token_scores ORDER BY 1"
    ).fetchall()
    assert rows == [(5, -1.0, None, None), (6, -1.0, 1.5, 2)]
    assert con.execute("SELECT count(*) FROM word_scores").fetchall() == [(0,)]
    con.close()

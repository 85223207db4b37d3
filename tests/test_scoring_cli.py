"""`psystats score` end to end: runs, resume after kill -9, no-op reruns, errors, OOM back-off."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from psystats.cli import main
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.sql import scalar

STUDY = "franke2024bayesian"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(db: Path, *args: str):
    return CliRunner().invoke(main, ["--db", str(db), *args], catch_exceptions=False)


def score_rows(db: Path, run_id: int | None = None) -> list[tuple]:
    con = warehouse_db.open(db)
    try:
        return con.execute(
            "SELECT response_id, nll, n_tokens, first_token_nll, top1_all, top1_first, "
            "first_token_entropy FROM scores WHERE run_id = coalesce(?, run_id) "
            "ORDER BY response_id",
            [run_id],
        ).fetchall()
    finally:
        con.close()


def score_cmd(db: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "psystats.cli",
        "--db",
        str(db),
        "score",
        "--model",
        str(model),
        "--study",
        STUDY,
        "--cpu-threads",
        "1",
        *extra,
    ]


@pytest.mark.slow
def test_kill_9_then_resume_gives_exactly_the_uninterrupted_rows(
    tiny_models, small_warehouse, tmp_path
):
    model = tiny_models["qwen3"]
    full, killed = tmp_path / "full.duckdb", tmp_path / "killed.duckdb"
    shutil.copy(small_warehouse, full)
    shutil.copy(small_warehouse, killed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(score_cmd(full, model, "-q"), check=True, env=env, capture_output=True)

    # Small batches so the kill lands between commits; kill after two commits.
    proc = subprocess.Popen(
        score_cmd(killed, model, "--commit-chars", "40000"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    commits = 0
    for line in proc.stderr:
        if line.startswith("committed batch"):
            commits += 1
            if commits == 2:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    assert commits == 2 and proc.returncode == -signal.SIGKILL
    partial = score_rows(killed)
    assert 0 < len(partial) < len(score_rows(full))

    resumed = subprocess.run(
        score_cmd(killed, model, "--commit-chars", "40000"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run 1" in resumed.stderr
    assert score_rows(killed) == score_rows(full)  # same rows, same values, no duplicates
    con = warehouse_db.open(killed)
    try:
        n_resp = scalar(con, "SELECT count(*) FROM responses WHERE study = ?", [STUDY])
        assert scalar(con, "SELECT count(*) FROM scores") == n_resp
        assert scalar(con, "SELECT count(DISTINCT response_id) FROM scores") == n_resp
        assert con.execute("SELECT run_id, status, n_responses FROM score_runs").fetchall() == [
            (1, "complete", n_resp)
        ]
    finally:
        con.close()


def test_rerun_is_noop_force_starts_new_run_and_sql_means(tiny_models, warehouse_copy):
    model = tiny_models["llama"]
    r = cli(warehouse_copy, "score", "--model", str(model), "--study", STUDY, "-q")
    assert r.exit_code == 0, r.output
    first = score_rows(warehouse_copy)
    r = cli(warehouse_copy, "score", "--model", str(model), "--study", STUDY, "-q")
    assert "already complete" in r.output
    assert score_rows(warehouse_copy) == first
    r = cli(warehouse_copy, "score", "--model", str(model), "--study", STUDY, "-q", "--force")
    assert r.exit_code == 0, r.output
    assert score_rows(warehouse_copy, 2) == score_rows(warehouse_copy, 1)
    # Done-when: mean NLL per model and experiment from plain SQL.
    r = cli(
        warehouse_copy,
        "sql",
        "--format",
        "json",
        "SELECT sr.model, r.experiment, avg(s.nll) AS mean_nll, count(*) AS n "
        "FROM scores s JOIN score_runs sr USING (run_id) JOIN responses r USING (response_id) "
        "WHERE sr.run_id = 1 GROUP BY ALL",
    )
    rows = json.loads(r.output)
    assert len(rows) == 1 and rows[0]["model"] == model.name
    assert rows[0]["mean_nll"] == pytest.approx(np.mean([row[1] for row in first]))


def test_unknown_model_path(warehouse_copy):
    r = CliRunner().invoke(
        main, ["--db", str(warehouse_copy), "score", "--model", "/no/such/model-folder"]
    )
    assert r.exit_code == 1
    assert "/no/such/model-folder" in r.output


def test_chat_needs_a_chat_template(tiny_models, warehouse_copy, tmp_path):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_models["qwen3"], model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(
        main,
        [
            "--db",
            str(warehouse_copy),
            "score",
            "--model",
            str(model),
            "--condition",
            "chat",
            "--study",
            STUDY,
        ],
    )
    assert r.exit_code == 1
    assert "no chat template" in r.output


def test_pickle_checkpoints_are_refused(tiny_models, tmp_path):
    from psystats.scoring.loader import load_model
    from psystats.scoring.model_files import ModelLoadError

    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_models["qwen3"] / "config.json", folder)
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model({"name": "pickled", "source": str(folder)})


def test_nan_logits_fail_the_run_and_write_nothing(tiny_models, warehouse_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_models["olmo2"], model)
    weights = load_file(model / "model.safetensors")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    bad = tok("F", add_special_tokens=False)["input_ids"]
    assert len(bad) == 1
    emb = next(k for k in weights if "embed_tokens" in k)
    weights[emb][bad[0]] = float("nan")  # only transcripts containing "F" are hit
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    r = CliRunner().invoke(
        main, ["--db", str(warehouse_copy), "score", "--model", str(model), "--study", STUDY, "-q"]
    )
    assert r.exit_code == 1
    assert "NaN/inf logits" in r.output and "response_id" in r.output
    con = warehouse_db.open(warehouse_copy)
    try:
        assert scalar(con, "SELECT count(*) FROM scores") == 0
        status, error = con.execute("SELECT status, error FROM score_runs").fetchall()[0]
        assert status == "failed" and "NaN/inf" in error
        # The named responses are real, and belong to transcripts holding the poisoned token.
        named = [int(x) for x in error.split("response_id ")[1].split(")")[0].split(", ")]
        texts = con.execute(
            "SELECT DISTINCT t.text FROM responses r JOIN transcripts t USING (participant_key) "
            f"WHERE r.response_id IN ({', '.join('?' * len(named))})",
            named,
        ).fetchall()
    finally:
        con.close()
    assert named and texts
    assert all(bad[0] in tok(t, add_special_tokens=False)["input_ids"] for (t,) in texts)


def test_out_of_memory_halves_the_budget_and_continues(tiny_models, small_warehouse):
    from psystats.scoring.engine import Scorer
    from psystats.scoring.inputs import load_inputs

    con = warehouse_db.open(small_warehouse)
    try:
        ps = load_inputs(con, studies=[STUDY])[:12]
    finally:
        con.close()
    path = tiny_models["qwen3"]
    row = {"name": "tiny", "source": str(path)}
    want = Scorer(row, packing="packed", token_budget=100_000).score(ps).scores
    sc = Scorer(row, packing="packed", token_budget=6000)
    longest = max(sc.count_tokens(p) for p in ps)
    limit = 3 * longest

    # The device "has memory" for `limit` tokens per forward: larger forwards
    # fail the way CUDA does.
    def fake_device_limit(module, args, kwargs):
        n = kwargs["input_ids"].shape[1]
        if n > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({n} tokens)")

    handle = sc.lm.get_decoder().register_forward_pre_hook(fake_device_limit, with_kwargs=True)
    try:
        batch = sc.score(ps)
    finally:
        handle.remove()
    assert batch.counts["oom_backoffs"] >= 1
    assert batch.counts["final_token_budget"] <= limit
    np.testing.assert_allclose(batch.scores["nll"].to_numpy(), want["nll"].to_numpy(), rtol=1e-5)

"""Models spread by accelerate device maps give exactly the single-device scores.

No GPU here, so the split is between the CPU and disk offload: both are real
accelerate code paths (hooks that move activations to the execution device,
weights streamed in from the offload folder / safetensors files per layer),
the same machinery that spreads a 70B model over the GPUs of a node.
"""

from __future__ import annotations

import pytest

from helpers import model_row

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def participants():
    from psystats.scoring.inputs import ParticipantInput

    text = "Choose a box. You press <<A>>. You win. Next you press <<green hexagon>>. Done."
    a = text.index("<<A>>") + 2
    b = text.index("<<green") + 2
    text2 = "Rate the pair. You answer <<B>>."
    c = text2.index("<<B>>") + 2
    return [
        ParticipantInput(1, "e", text, (11, 12), ((a, a + 1), (b, b + len("green hexagon")))),
        ParticipantInput(2, "e", text2, (21,), ((c, c + 1),)),
    ]


OPTIONS = {"e": ["A", "B", "green hexagon"]}


@pytest.fixture(scope="module")
def single_device(tiny_models):
    from psystats.scoring.engine import Scorer

    # Packing changes float32 rounding (one forward of two documents vs two), so each
    # packing mode is compared with itself on one device.
    return {
        packing: Scorer(
            model_row(tiny_models["qwen3"]), dtype="float32", option_sets=OPTIONS, packing=packing
        ).score(participants())
        for packing in ("none", "packed")
    }


@pytest.mark.parametrize("packing", ["none", "packed"])
def test_explicit_device_map_with_disk_offload_equals_single_device(
    tiny_models, single_device, tmp_path, packing
):
    from psystats.scoring.engine import Scorer

    dm = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "lm_head": "disk",
    }
    sc = Scorer(
        model_row(tiny_models["qwen3"]),
        dtype="float32",
        option_sets=OPTIONS,
        device_map=dm,
        offload_folder=str(tmp_path / "offload"),
        packing=packing,
    )
    assert sc.placement == dm
    assert sc.settings["batching"]["device"] == "device-map"
    assert sc.settings["batching"]["placement"] == dm
    batch = sc.score(participants())
    want = single_device[packing]
    assert batch.scores.equals(want.scores)
    assert batch.options.sort_by([("response_id", "ascending"), ("option", "ascending")]).equals(
        want.options.sort_by([("response_id", "ascending"), ("option", "ascending")])
    )


def test_auto_device_map_under_max_memory_offloads_and_equals_single_device(
    tiny_models, single_device, tmp_path
):
    """--device-map auto with --max-memory cpu=... too small for the model (plus the buffer
    accelerate keeps for its largest layer): every layer is streamed from the disk offload,
    and the numbers do not move."""
    from psystats.scoring.devices import parse_max_memory
    from psystats.scoring.engine import Scorer

    sc = Scorer(
        model_row(tiny_models["qwen3"]),
        dtype="float32",
        option_sets=OPTIONS,
        device_map="auto",
        max_memory=parse_max_memory(["cpu=14MB"]),
        offload_folder=str(tmp_path / "offload"),
    )
    assert "disk" in set(sc.placement.values())
    assert sc.settings["batching"]["max_memory"] == {"cpu": "14MB"}
    assert sc.packing == "none"
    assert sc.score(participants()).scores.equals(single_device["none"].scores)


def test_max_memory_and_device_map_values_are_checked():
    from psystats.scoring.devices import parse_max_memory
    from psystats.scoring.loader import load_model
    from psystats.scoring.model_files import ModelLoadError

    assert parse_max_memory(["0=70GiB", "1=70GiB", "cpu=200GiB"]) == {
        0: "70GiB",
        1: "70GiB",
        "cpu": "200GiB",
    }
    assert parse_max_memory(None) is None
    with pytest.raises(ModelLoadError, match="expected DEVICE=SIZE"):
        parse_max_memory(["0"])
    with pytest.raises(ModelLoadError, match="unknown device 'gpu0'"):
        parse_max_memory(["gpu0=10GiB"])
    with pytest.raises(ModelLoadError, match="unknown --device-map 'everywhere'"):
        load_model({"name": "x", "source": "/nonexistent"}, device_map="everywhere")


def test_gpus_per_model_gives_ray_actors_groups_of_gpus_and_a_device_map():
    from psystats.scoring.devices import gpus_per_model_options
    from psystats.scoring.model_files import ModelLoadError

    assert gpus_per_model_options(None, None, "local") == (None, None)
    assert gpus_per_model_options(4, None, "ray") == (4.0, "auto")
    assert gpus_per_model_options(4, "balanced", "ray") == (4.0, "balanced")
    assert gpus_per_model_options(1, None, "ray") == (1.0, None)
    with pytest.raises(ModelLoadError, match="use it with --engine ray"):
        gpus_per_model_options(4, None, "local")
    with pytest.raises(ModelLoadError, match="give 1 or more"):
        gpus_per_model_options(0, None, "ray")


def test_cli_refuses_bad_placement_options_in_one_line(tmp_path, psych201, tiny_models):
    from click.testing import CliRunner

    from helpers import cli_base_warehouse
    from psystats.cli import main

    db = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    for args, msg in [
        (["--max-memory", "cpu"], "expected DEVICE=SIZE"),
        (["--gpus-per-model", "4"], "use it with --engine ray"),
    ]:
        r = CliRunner().invoke(main, ["--db", str(db), "score", "--model", "tiny-qwen3", *args])
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert msg in r.output


@pytest.mark.slow
def test_cli_device_map_with_disk_offload_stores_the_single_device_scores(
    tmp_path, psych201, tiny_models
):
    """`psystats score --device-map auto --max-memory cpu=... --offload-folder`: the scores
    stored equal a plain run's exactly, and the run records the placement."""
    import json
    import shutil

    from helpers import cli_base_warehouse, cli_ok
    from psystats.warehouse import db as warehouse_db

    db = cli_base_warehouse(tmp_path, psych201, tiny_models["qwen3"])
    plain = tmp_path / "plain.duckdb"
    shutil.copy(db, plain)
    cli_ok("--db", plain, "score", "--model", "tiny-qwen3", "-q")
    cli_ok(
        "--db", db, "score", "--model", "tiny-qwen3", "-q", "--device-map", "auto",
        "--max-memory", "cpu=14MB", "--offload-folder", tmp_path / "offload",
    )  # fmt: skip
    got, want = (warehouse_db.open(p) for p in (db, plain))
    try:
        q = "SELECT response_id, nll, first_token_entropy FROM scores ORDER BY response_id"
        assert got.execute(q).fetchall() == want.execute(q).fetchall()
        settings = json.loads(
            got.execute("SELECT settings FROM score_runs ORDER BY run_id DESC LIMIT 1").fetchall()[
                0
            ][0]
        )
    finally:
        got.close()
        want.close()
    assert settings["batching"]["device_map"] == "auto"
    assert "disk" in settings["batching"]["placement"].values()


def test_device_map_refuses_compile_and_flex(tiny_models):
    from psystats.scoring.engine import Scorer
    from psystats.scoring.errors import ScoringError

    for kw, msg in [({"compile": True}, "drop --compile"), ({"attention": "flex"}, "flex")]:
        with pytest.raises(ScoringError, match=msg):
            Scorer(model_row(tiny_models["qwen3"]), device_map={"": "cpu"}, **kw)

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
    from psystats.scoring.engine import Scorer
    from psystats.scoring.loader import parse_max_memory

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
    from psystats.scoring.loader import ModelLoadError, load_model, parse_max_memory

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

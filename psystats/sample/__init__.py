"""The embedded demo sample: a few real Psych-201 participants, with attribution.

``sample_path()`` is a folder laid out as Psych-201 is (``<study>/prompts.jsonl``
with the study's ``README.md``, and the collection's ``LICENSE``), so
``psystats ingest $(python -c 'import psystats.sample as s; print(s.sample_path())')``
works like ingesting the full collection.  ``scripts/make_sample.py`` cut it.
"""
from __future__ import annotations

import json
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def sample_path() -> Path:
    """Folder holding the sample studies (one sub-folder per study)."""
    return _HERE / "psych201"


def sample_studies() -> dict[str, int]:
    """Study name -> number of participants in the sample."""
    manifest = json.loads((sample_path() / "SAMPLE.json").read_text())
    return dict(manifest["participants"])

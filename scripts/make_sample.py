#!/usr/bin/env python
"""Cut the embedded demo sample (``psystats/sample/psych201``) from Psych-201.

The sample is a handful of real participants from a few Psych-201 studies in
different task domains, small enough to ship inside the package and to score
with a 135M-parameter model on two CPU cores in a couple of minutes.

Participants are drawn uniformly at random with a fixed seed, and their JSON
lines are copied byte for byte (so each participant's content hash is the one
the full study gives).  Each study's README and the collection's LICENSE are
copied beside the data for attribution.

    python scripts/make_sample.py                      # what ships
    python scripts/make_sample.py --source ../shared/data/psych201 --seed 201

Rerunning with the same source, seed and counts reproduces the files exactly.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "psych201"
DEFAULT_DEST = ROOT / "psystats" / "sample" / "psych201"

# study -> participants drawn: three task domains in four studies; counts keep the sample near
# 27,000 SmolLM2 tokens (transcript lengths differ 7-fold between studies).
STUDIES: dict[str, int] = {
    "franke2024bayesian": 8,  # Psycholinguistics, ~600 tokens each
    "guenther2023associations_individual": 6,  # Psycholinguistics, age given
    "zhu2024games": 2,  # Economic Games, ~3,500 tokens each
    "thoma2025problearn": 2,  # Reinforcement Learning, age and gender given
}
SEED = 201


def read_lines(study_dir: Path) -> list[bytes]:
    """The study's JSONL lines, as bytes, from prompts.jsonl or prompts.jsonl.zip."""
    plain = study_dir / "prompts.jsonl"
    if plain.is_file():
        data = plain.read_bytes()
    else:
        with zipfile.ZipFile(study_dir / "prompts.jsonl.zip") as zf:
            data = zf.read("prompts.jsonl")
    return [line for line in data.splitlines() if line.strip()]


def cut(source: Path, dest: Path, studies: dict[str, int], seed: int) -> dict[str, int]:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy(source / "LICENSE", dest / "LICENSE")
    counts = {}
    for study, n in sorted(studies.items()):
        lines = read_lines(source / study)
        # One generator per study, seeded by (seed, study), so adding a
        # study does not change the draws of the others.
        rng = random.Random(f"{seed}:{study}")
        keep = sorted(rng.sample(range(len(lines)), n))
        out = dest / study
        out.mkdir()
        (out / "prompts.jsonl").write_bytes(b"\n".join(lines[k] for k in keep) + b"\n")
        shutil.copy(source / study / "README.md", out / "README.md")
        for k in keep:
            json.loads(lines[k])  # fail here, not in the demo, if a line is not JSON
        counts[study] = n
    manifest = {
        "source": "Psych-201",
        "seed": seed,
        "participants": counts,
        "script": "scripts/make_sample.py",
        "license": "Apache-2.0 (see LICENSE)",
    }
    (dest / "SAMPLE.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Psych-201 folder")
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    counts = cut(args.source, args.dest, STUDIES, args.seed)
    for study, n in counts.items():
        print(f"{study}: {n} participants")
    print(f"written to {args.dest}")


if __name__ == "__main__":
    main()

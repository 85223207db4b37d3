"""Task-domain mapping: experiment (or study) -> zero or more domains.

The file format is the Psych-201 authors' ``experiment_domains.csv``:
``experiment,dataset,<domain 1>,...,<domain k>`` with 0/1 cells.  A row whose
cells are all 0 says "this experiment belongs to no listed domain", which is
different from an experiment the mapping does not know.

Keys in that file are study names for Psych-201 (``guenther2022relational``)
while the records' ``experiment`` field can be finer
(``guenther2022Relational``, ``olschewski2024skewness/study01.csv``).  An
experiment is matched, case-insensitively, by the first of: its own name, its
name up to the first ``/``, its study name.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from .errors import WarehouseError
from .sql import scalar

BUILTIN_SOURCE = "builtin:experiment_domains.csv"


def builtin_path() -> Path:
    return Path(str(resources.files("psystats.warehouse") / "data" / "experiment_domains.csv"))


def read_mapping(path: str | Path) -> list[tuple[str, str | None, str | None]]:
    """Parse a mapping file into ``(key, domain or None, dataset)`` rows.

    Raises :class:`WarehouseError` naming file, line and field on bad input.
    """
    path = Path(path)
    rows: list[tuple[str, str | None, str | None]] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[0].strip().lower() != "experiment":
                raise WarehouseError(
                    f"{path}:1: field 'experiment': the first column must be "
                    f"'experiment' (got {header[:1] if header else 'an empty file'})"
                )
            has_dataset = len(header) > 1 and header[1].strip().lower() == "dataset"
            first_domain = 2 if has_dataset else 1
            domains = [h.strip() for h in header[first_domain:]]
            if not domains:
                raise WarehouseError(f"{path}:1: no domain columns")
            for lineno, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise WarehouseError(
                        f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}"
                    )
                key = row[0].strip()
                if not key:
                    raise WarehouseError(f"{path}:{lineno}: field 'experiment' is empty")
                dataset = row[1].strip() if has_dataset else None
                listed = []
                for name, cell in zip(domains, row[first_domain:]):
                    cell = cell.strip()
                    if cell not in ("0", "1", ""):
                        raise WarehouseError(
                            f"{path}:{lineno}: field '{name}': expected 0 or 1, got {cell!r}"
                        )
                    if cell == "1":
                        listed.append(name)
                if listed:
                    rows.extend((key, d, dataset) for d in listed)
                else:
                    rows.append((key, None, dataset))
    except UnicodeDecodeError as e:
        raise WarehouseError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    return rows


def load_mapping(con: duckdb.DuckDBPyConnection, path: str | Path | None = None) -> int:
    """Load a mapping file (default: the shipped one) into ``domain_map``.

    Keys the file lists replace earlier rows for the same keys, so a user's
    file overrides the builtin mapping for the experiments it names.  Call
    inside a transaction; returns the number of keys loaded.
    """
    source = str(path) if path is not None else BUILTIN_SOURCE
    rows = read_mapping(path if path is not None else builtin_path())
    keys = sorted({k for k, _, _ in rows})
    con.execute(
        "DELETE FROM domain_map WHERE lower(key) IN (SELECT unnest(?))", [[k.lower() for k in keys]]
    )
    con.executemany(
        "INSERT INTO domain_map (key, domain, dataset, source) VALUES (?, ?, ?, ?)",
        [(k, d, ds, source) for k, d, ds in rows],
    )
    return len(keys)


def ensure_builtin(con: duckdb.DuckDBPyConnection) -> None:
    """Load the shipped mapping once, the first time a warehouse needs it."""
    if scalar(con, "SELECT count(*) FROM domain_map") == 0:
        load_mapping(con, None)


def resolve(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)compute ``experiments.domain/domains/domain_key`` from ``domain_map``."""
    mapping: dict[str, tuple[str, list[str]]] = {}
    for key, domain in con.execute("SELECT key, domain FROM domain_map ORDER BY rowid").fetchall():
        entry = mapping.setdefault(key.lower(), (key, []))
        if domain is not None and domain not in entry[1]:
            entry[1].append(domain)
    updates: list[tuple[str | None, list[str], str | None, Any]] = []
    for experiment, study in con.execute("SELECT experiment, study FROM experiments").fetchall():
        hit = None
        for candidate in (experiment, experiment.split("/", 1)[0], study):
            hit = mapping.get(candidate.lower())
            if hit:
                break
        if hit:
            key, domains = hit
            updates.append((domains[0] if domains else None, domains, key, experiment))
        else:
            updates.append((None, [], None, experiment))
    if updates:
        con.executemany(
            "UPDATE experiments SET domain = ?, domains = ?, domain_key = ? WHERE experiment = ?",
            updates,
        )

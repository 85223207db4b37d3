"""The notebook API: ``import psystats as ps; wh = ps.open("psych.duckdb")``.

Every method returns a pandas ``DataFrame`` or an ArviZ ``InferenceData``
(or, for fits, the fit's ``FitResult``), so a statistician can go from the
warehouse to a custom model without SQL or the command line.  The CLI
commands are thin layers over the same functions, with the same names
(docs/api.md walks through an example).

The warehouse file is opened for each call and closed after it, so a
notebook never holds DuckDB's file lock while a ``psystats`` command runs
in a terminal.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from psystats.stats.options import MAX_SEED, OptionError, unknown_names, validated
from psystats.warehouse import db as warehouse_db
from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.integrity import damage_error, is_damage_error
from psystats.warehouse.names import check_names
from psystats.warehouse.sql import where_clause
from psystats.warehouse.validators import Check, IntIn, Maybe, Text

PLOTS = ("nll-vs-size", "domain-heatmap", "forest", "generations", "ppc")


def _frame(cur) -> pd.DataFrame:
    return pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])


class Warehouse:
    """A psystats warehouse file, read and fitted from Python.

    ``ps.open(path)`` refuses a path that does not exist (``create=True``
    makes a new, empty warehouse).
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise WarehouseError(
                    f"no warehouse at {self.path}: run `psystats ingest --db {self.path} ...` "
                    "first, or ps.open(path, create=True)"
                )
            warehouse_db.open(self.path, "write", create=True).close()

    def __repr__(self) -> str:
        return f"psystats.Warehouse({str(self.path)!r})"

    @contextmanager
    def connection(self, *, read_only: bool = True) -> Iterator[Any]:
        """A DuckDB connection to the file, closed on exit (``with wh.connection() as con:``).

        Read-only by default (``warehouse.db.open`` mode ``"read"``); ``read_only=False``
        holds the file for writing until the block ends (mode ``"write"``).  A query of
        damaged Parquet score files raises one WarehouseError naming the run.
        """
        with warehouse_db.open(self.path, "read" if read_only else "write") as con:
            try:
                yield con
            except duckdb.Error as e:
                if is_damage_error(e):
                    raise damage_error(e) from None
                raise

    @contextmanager
    def _writer(self) -> Iterator[Any]:
        """A connection for a fit: it holds the file only per statement (mode
        ``"statement"``), so `psystats` commands in a terminal keep working while a
        notebook samples."""
        with warehouse_db.open(self.path, "statement") as con:
            yield con

    def _check(self, kind: str, names: str | Sequence[str] | None) -> None:
        """Unknown names raise with "did you mean", as on the command line."""
        if names is not None:
            with self.connection() as con:
                check_names(con, kind, _list(names, kind))

    # ------------------------------------------------------------------ reading

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Any read-only SQL as a DataFrame (bind values with ``?`` and ``params``)."""
        query = _valid("query", Text(longest=10**7), query)
        if params is not None and (isinstance(params, (str, bytes)) or not _is_list(params)):
            raise OptionError(f"params must be a list of values, got {params!r:.60}")
        with self.connection() as con:
            try:
                return _frame(con.execute(query, list(params) if params else None))
            except duckdb.Error as e:  # the user's SQL: DuckDB's first line says what is wrong
                if is_damage_error(e):
                    raise
                raise WarehouseError(str(e).strip().splitlines()[0]) from None

    def summary(self) -> pd.DataFrame:
        """Counts per study: experiments, participants, responses."""
        return self.sql(
            "SELECT study, count(DISTINCT experiment) AS experiments,"
            " count(DISTINCT participant_key) AS participants, count(*) AS responses"
            " FROM responses GROUP BY study ORDER BY study"
        )

    def responses(
        self,
        *,
        study: str | Sequence[str] | None = None,
        experiment: str | Sequence[str] | None = None,
        participant: str | Sequence[str] | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Human responses with their experiment's domain (one row per response).

        An unknown study or experiment raises a WarehouseError with "did you mean".
        """
        self._check("study", study)
        self._check("experiment", experiment)
        filt, params = where_clause(
            {
                "r.study": _list(study),
                "r.experiment": _list(experiment),
                "r.participant": _list(_as_text(participant), "participant"),
            }
        )
        q = (
            "SELECT r.response_id, r.study, r.experiment, e.domain, r.participant,"
            " r.participant_key, r.response_index, r.text, r.rt"
            " FROM responses r LEFT JOIN experiments e USING (experiment) "
            f"{filt} ORDER BY r.response_id"
        )
        if limit is not None:
            q += " LIMIT ?"
            params = [*params, _valid("limit", IntIn(0), limit)]
        return self.sql(q, params)

    def models(self) -> pd.DataFrame:
        """The model registry: family, generation, size, post-training type, base."""
        return self.sql(
            "SELECT name, family, generation, generation_order, n_params, post_training,"
            " base_model, source FROM models ORDER BY name"
        )

    def runs(self) -> pd.DataFrame:
        """Score runs: model, condition, status, counts, hashes of weights and tokenizer."""
        return self.sql(
            "SELECT run_id, model, condition, scorer, status, n_responses, n_skipped, dtype,"
            " device, weights_sha256, tokenizer_sha256, psystats_version, started_at,"
            " finished_at FROM score_runs ORDER BY run_id"
        )

    def scores(
        self,
        *,
        model: str | Sequence[str] | None = None,
        condition: str | Sequence[str] | None = None,
        experiment: str | Sequence[str] | None = None,
        run_id: int | None = None,
        latest: bool = True,
    ) -> pd.DataFrame:
        """Per-response scores joined with the response and its domain.

        By default each (model, condition, experiment) contributes its latest
        complete run (the rule every fit uses); ``latest=False`` returns every
        run, ``run_id`` one run.  Columns: run_id, model, condition, response_id,
        study, experiment, domain, participant, response_index, nll, n_tokens,
        first_token_nll, top1_all, top1_first, first_token_entropy.  An unknown model,
        condition or experiment raises a WarehouseError with "did you mean".
        """
        from psystats.stats.data import latest_runs_sql

        self._check("model", model)
        self._check("condition", condition)
        self._check("experiment", experiment)

        filt, params = where_clause(
            {
                "sr.model": _list(model),
                "sr.condition": _list(condition),
                "r.experiment": _list(experiment),
                "sr.run_id": None if run_id is None else [_valid("run_id", IntIn(1), run_id)],
            }
        )
        cols = (
            "s.run_id, sr.model, sr.condition, s.response_id, r.study, r.experiment,"
            " e.domain, r.participant, r.response_index, s.nll, s.n_tokens,"
            " s.first_token_nll, s.top1_all, s.top1_first, s.first_token_entropy"
        )
        joins = (
            "FROM scores s JOIN score_runs sr ON sr.run_id = s.run_id"
            " JOIN responses r ON r.response_id = s.response_id"
            " LEFT JOIN experiments e ON e.experiment = r.experiment"
        )
        if latest and run_id is None:
            conds = _list(condition) or [
                c for (c,) in self.sql("SELECT DISTINCT condition FROM score_runs").values
            ]
            if not conds:
                return self.sql(f"SELECT {cols} {joins} WHERE false")
            ph = ", ".join("?" * len(conds))
            q = (
                f"WITH {latest_runs_sql(ph)} SELECT {cols} {joins}"
                " JOIN latest_runs lr ON lr.run_id = s.run_id AND lr.experiment = r.experiment"
                f" {filt} ORDER BY s.run_id, s.response_id"
            )
            return self.sql(q, [*conds, *params])
        return self.sql(f"SELECT {cols} {joins} {filt} ORDER BY s.run_id, s.response_id", params)

    def token_scores(self, run_id: int) -> pd.DataFrame:
        """Per-token scores of a run scored with ``--token-level`` (``--entropy``/``--rank``
        fill those columns), joined with the response's keys; docs/scoring.md."""
        return self._level(run_id, "token")

    def word_scores(self, run_id: int) -> pd.DataFrame:
        """Per-word scores of a run scored with ``--word-level`` (word, char span, tokens,
        ``nll`` with the beginning-of-word correction, ``token_nll``); docs/scoring.md."""
        return self._level(run_id, "word")

    def _level(self, run_id: int, level: str) -> pd.DataFrame:
        from psystats.scoring.export_levels import level_query

        with self.connection() as con:
            query, params = level_query(con, [_valid("run_id", IntIn(1), run_id)], level)
            return _frame(con.execute(query, params))

    def participant_means(
        self,
        condition: str = "plain",
        *,
        models: Sequence[str] | None = None,
        experiments: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Per-participant mean response NLL of each model (what the models aggregate)."""
        from psystats.stats.data import participant_means

        with self.connection() as con:
            return participant_means(
                con,
                condition=_valid("condition", Text(), condition),
                models=_list(models, "models"),
                experiments=_list(experiments, "experiments"),
            )

    def cells(
        self,
        selection: Any = None,
        *,
        scale: str = "nats",
        formula_columns: bool = False,
        **names: Any,
    ) -> pd.DataFrame:
        """The (pair, experiment) cell table the effects model fits, with ``y``/``se`` on ``scale``.

        Which scores: a ``Selection`` (``psystats.stats.options``) and/or its
        fields by name, as ``psystats export cells`` takes them
        (``condition``, ``post_condition``, ``base_condition``, ``models``,
        ``experiments``).  ``formula_columns=True`` returns the columns a
        formula may use (``mean, se, type, family, log_params, domain,
        experiment, pair, ...``).
        """
        from psystats.stats.cells import selected_cells
        from psystats.stats.options import Selection, build_spec

        sel = build_spec(Selection, selection, names, "selection")
        sel.require("cells", ["models", "experiments"])
        with self.connection() as con:
            cells = selected_cells(con, sel, scale)
        if formula_columns:
            from psystats.stats.formula import formula_frame

            return formula_frame(cells)[0]
        return cells

    # ------------------------------------------------------------------- fits

    def fits(self, kind: str | None = None) -> pd.DataFrame:
        """Stored fits, newest last: id, kind, name, condition, scale, passed, formula, path."""
        filt, params = where_clause({"kind": _list(kind)})
        return self.sql(
            "SELECT fit_id, kind, name, condition, scale, passed,"
            " json_extract_string(spec, '$.formula') AS formula, seconds, created_at,"
            f" netcdf_path FROM fits {filt} ORDER BY fit_id",
            params,
        )

    def params(self, fit_id: int, parameter: str | Sequence[str] | None = None) -> pd.DataFrame:
        """A fit's ``fit_params`` rows: mean, sd, quantiles, HDI, R-hat, ESS per element."""
        fit = _valid("fit_id", IntIn(1), fit_id)
        filt, params = where_clause({"fit_id": [fit], "parameter": _list(parameter)})
        return self.sql(f"SELECT * FROM fit_params {filt} ORDER BY parameter, label", params)

    def fit_info(self, fit_id: int) -> dict:
        """The ``fits`` row of a fit as a dict (JSON columns parsed)."""
        return self._load(fit_id)[0]

    def posterior(self, fit_id: int):
        """The whole ``arviz.InferenceData`` of a stored fit (posterior, checks, data)."""
        return self._load(fit_id)[1]

    def _load(self, fit_id: int):
        from psystats.stats.store import load_fit

        with self.connection() as con:
            return load_fit(con, _valid("fit_id", IntIn(1), fit_id))

    def fit(
        self,
        kind: str = "effects",
        selection: Any = None,
        spec: Any = None,
        sampling: Any = None,
        *,
        allow_failure: bool = False,
        store: Any = None,
        **options: Any,
    ):
        """Run a fit and store it; returns its :class:`~psystats.stats.pipeline.FitResult`.

        The fit contract (docs/api.md): ``kind`` is effects, formula,
        generations, persona or accuracy; ``selection``, ``spec``,
        ``sampling``, ``store`` are the option objects of
        ``psystats.stats.options`` (or dicts of their fields), and any of their
        fields may be given by name instead, named as the CLI options are
        (``post_condition``, ``models``, ``draws``, ``target_accept``,
        ``no_terms``, ``name``, ...; ``psystats.stats.fit_kinds``).  An unknown
        name is refused with a "did you mean".  The result carries ``fit_id``,
        ``idata``, ``summary``, ``diagnostics``, ``notes`` and the analysis'
        ``data`` and ``extras``.
        """
        from psystats.stats.fit_kinds import fit_request

        kind = _valid("kind", Text(), kind)
        request = fit_request(
            kind,
            selection,
            spec,
            sampling,
            allow_failure=allow_failure,
            store=store,
            **options,
        )  # every value checked before the file is opened
        with self._writer() as con:
            return request.run(con)

    def fit_formula(self, formula: str, **options: Any):
        """``wh.fit("formula", formula=formula, ...)``: a Bambi formula over the cells.

        Returns the :class:`~psystats.stats.pipeline.FitResult`
        (``extras["bambi_model"]`` the Bambi model, ``data`` the cell frame).
        See docs/api.md for the columns and the known-measurement-error
        likelihood.
        """
        return self.fit("formula", formula=formula, **options)

    def predict(
        self,
        fit_id: int,
        new_pair: Mapping[str, Any] | str,
        *,
        per_experiment: bool = False,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Expected post-minus-base difference of a new pair under a stored formula or effects fit.

        ``new_pair``: e.g. ``{"type": "instruct", "family": "llama", "n_params": 70e9}``
        (or the CLI's text form).  New group levels (the pair itself, a new
        family) are drawn from their fitted distributions, so the interval
        includes new-group uncertainty (docs/model.md, "Predictions").
        """
        from psystats.stats.predict import predict_fit

        with self.connection() as con:
            return predict_fit(
                con,
                _valid("fit_id", IntIn(1), fit_id),
                new_pair,
                per_experiment=per_experiment,
                seed=_valid("seed", IntIn(0, MAX_SEED), seed),
            )

    def formula_model(self, fit_id: int):
        """The Bambi model of a stored formula fit and its InferenceData (for ``bambi.interpret``)."""
        from psystats.stats.formula import load_formula_fit

        with self.connection() as con:
            _, idata, model, _ = load_formula_fit(con, _valid("fit_id", IntIn(1), fit_id))
        return model, idata

    def compare(
        self,
        fit_ids: Sequence[int],
        *,
        kfold: int | None = None,
        seed: int = 0,
        include_failed: bool = False,
    ) -> pd.DataFrame:
        """PSIS-LOO (``arviz.compare``) or K-fold comparison of stored fits of the same data.

        Each fit's pointwise leave-one-out values are read from its NetCDF;
        any kinds qualify when they saw the same observations (an effects and
        a formula fit of the same cells are matched cell by cell).  One row
        per fit (``fit``, ``kind``, ``gates``, ``method``, then arviz.compare's
        columns, ``k>0.7``, ``k>1``), best first; ``.attrs["notes"]`` has the
        caveats.  ``kfold=K`` refits effects and formula fits K times instead
        (``elpd_kfold``, ``p_kfold``; docs/model.md, ``psystats fit compare``).
        """
        from psystats.stats.compare import compare_fits

        ids = _ids(fit_ids, "fit_ids")
        kfold = _valid("kfold", Maybe(IntIn(2)), kfold)
        seed = _valid("seed", IntIn(0, MAX_SEED), seed)
        # K-fold refits take minutes: hold the file per statement only, as a fit does.
        with self._writer() if kfold else self.connection() as con:
            return compare_fits(
                con,
                ids,
                kfold=kfold,
                seed=seed,
                include_failed=include_failed,
            )

    # ------------------------------------------------------- figures, manifest

    def plot(self, name: str, output: str | os.PathLike, *, fit_id: int | None = None, **kw):
        """Write one report figure to ``output`` (.svg/.png/.pdf) and its data beside it (.csv).

        ``name``: nll-vs-size, domain-heatmap, forest, generations or ppc.
        Returns the (figure path, CSV path or None).
        """
        from psystats.reports.single import write_figure

        with self.connection() as con:
            return write_figure(con, name, _output(output), fit_id=fit_id, **kw)

    def manifest(self, ref: str | int) -> dict:
        """The reproducibility manifest of a run (``run:3``) or fit (``fit:2`` or ``2``)."""
        from psystats.warehouse.manifest import manifest

        with self.connection() as con:
            return manifest(con, ref)


def _valid(name: str, check: Check, value: Any) -> Any:
    """``value`` checked by one of the shared validators (OptionError, a WarehouseError)."""
    return validated(name, check, value)


def _named_only(method: Callable) -> Callable:
    """Refuse a keyword ``method`` does not take with a "did you mean" (a WarehouseError),
    not Python's TypeError."""
    sig = inspect.signature(method)
    known = [n for n in sig.parameters if n != "self"]
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return method  # it names what it takes itself (fit, cells)

    @functools.wraps(method)
    def wrapper(self: Warehouse, *args: Any, **kw: Any) -> Any:
        if set(kw) - set(known):
            raise unknown_names(f"{method.__name__}()", kw, known)
        return method(self, *args, **kw)

    return wrapper


for _name, _method in list(vars(Warehouse).items()):
    if callable(_method) and not _name.startswith("_"):
        setattr(Warehouse, _name, _named_only(_method))


def _output(path: Any) -> Path:
    """An output path's text checked (its kind is checked when written: outputs.py)."""
    return Path(
        _valid("output", Text(), os.fspath(path) if isinstance(path, os.PathLike) else path)
    )


def _as_text(v: Any) -> Any:
    """Participant ids as text: an integer id is the same participant as its digits."""
    items = list(v) if _is_list(v) else None if v is None else [v]
    if items is None:
        return None
    return [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in items]


def _is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple, set, frozenset, pd.Series, pd.Index)) or (
        hasattr(v, "__iter__") and not isinstance(v, (str, bytes, Mapping))
    )


def _list(v: str | Sequence[str] | None, name: str = "names") -> list | None:
    """Names as a list (one name, or a list of them; None: all), each a non-empty text."""
    if v is None:
        return None
    items = [v] if isinstance(v, str) or not _is_list(v) else list(v)
    return [_valid(name, Text(), x) for x in items]


def _ids(v: Any, name: str) -> list[int]:
    """Row ids (one, or a list of them), each a whole number of at least 1."""
    items = list(v) if _is_list(v) else [v]
    return [_valid(name, IntIn(1), x) for x in items]


def open(path: str | os.PathLike, *, create: bool = False) -> Warehouse:  # noqa: A001
    """Open a psystats warehouse: ``wh = psystats.open("psych.duckdb")``."""
    return Warehouse(path, create=create)

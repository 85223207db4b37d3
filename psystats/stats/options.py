"""What an analysis reads and how it samples: the one place of their defaults and their checks.

Every fit takes the same three option objects (docs/api.md, docs/model.md "One pipeline"):

* :class:`Selection`: which scores it reads (conditions, models, experiments,
  families, post-training types);
* :class:`SamplingOptions`: how it samples (draws, tune, chains, seed,
  sampler, target_accept, redraws);
* :class:`StoreOptions`: where it is stored (name, NetCDF folder).

Like ArviZ's ``rcParams``, each sampling setting is registered once in
:data:`SAMPLING` with its default, its validator and its help text.  The
dataclass takes its defaults and its checks from there, and so do the click
options of every ``psystats fit`` command (``psystats/commands/fit_options.py``)
and the notebook API (``wh.fit``), so a value is refused with the same words
wherever it comes from, and a default is written exactly once.  Validation is
total: any value of any type either becomes a valid setting or raises
:class:`OptionError` (a :class:`~psystats.warehouse.db.WarehouseError`, so the
CLI prints one line), never an ``OverflowError`` deep inside a sampler.

How the analyses read a :class:`Selection`:

* effects, formula, accuracy, generations and ``export cells`` pair a
  post-trained model with its base: post-trained scores come from
  :attr:`Selection.post` (``post_condition``, else ``condition``), base
  scores from :attr:`Selection.base` (``base_condition``, else ``condition``);
* persona compares one model under two conditions: the persona condition is
  ``post_condition`` (default ``"persona"``, :data:`PERSONA_CONDITION`) and
  the plain condition it is compared with is :attr:`Selection.base`
  (``base_condition``, else ``condition``, default ``"plain"``); the CLI's
  ``--persona-condition``/``--plain-condition`` fill exactly those two fields.

An analysis refuses a selection field it cannot apply (:meth:`Selection.require`)
rather than ignoring it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from psystats.warehouse.errors import WarehouseError
from psystats.warehouse.names import check_names
from psystats.warehouse.validators import (
    Check,
    Flag,
    FloatIn,
    IntIn,
    Maybe,
    OneOf,
    PathOf,
    Text,
    did_you_mean,
)


class OptionError(WarehouseError):
    """A bad option value (named, with what is allowed); the CLI shows it as a usage error."""


# --------------------------------------------------------------------------- validators

MAX_DRAWS = 1_000_000  # per chain; beyond this a posterior no longer fits in memory anyway
MAX_CHAINS = 256
MAX_SEED = 2**32 - 1  # what every random generator psystats seeds accepts
MAX_REDRAWS = 5  # each retry may double the draws: 2**5 = 32 times the first run
SAMPLERS = ("nutpie", "pymc")
TARGET_ACCEPT_RANGE = (0.5, 0.999)


@dataclass(frozen=True)
class Setting:
    """One registered option: its default, its validator and its help text."""

    name: str
    default: Any
    check: Check
    help: str

    def validate(self, value: Any) -> Any:
        """``value`` as stored, or :class:`OptionError` naming the setting and what it allows."""
        return validated(self.name, self.check, value)


def validated(name: str, check: Check, value: Any) -> Any:
    """``check(value)``, or :class:`OptionError` naming ``name`` and what it allows."""
    try:
        return check(value)
    except ValueError as e:
        raise OptionError(f"{name} {e}") from None


def _registry(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


SAMPLING: dict[str, Setting] = _registry(
    Setting("draws", 1000, IntIn(1, MAX_DRAWS), "Posterior draws per chain."),
    Setting("tune", 1000, IntIn(0, MAX_DRAWS), "Warm-up draws per chain."),
    Setting("chains", 4, IntIn(1, MAX_CHAINS), "Chains (R-hat needs at least 2; use 4 or more)."),
    Setting(
        "seed",
        0,
        IntIn(0, MAX_SEED),
        "Random seed of the sampler and of anything random in the analysis (recorded).",
    ),
    Setting(
        "sampler", "nutpie", OneOf(SAMPLERS), "NUTS implementation: nutpie, or PyMC's own NUTS."
    ),
    Setting(
        "target_accept",
        0.95,
        FloatIn(*TARGET_ACCEPT_RANGE),
        "NUTS target acceptance; raise it (0.99) against divergences.",
    ),
    Setting(
        "redraws",
        2,
        IntIn(0, MAX_REDRAWS),
        "How often a fit that narrowly missed its gates samples again (a few divergences: "
        "target_accept 0.99; a narrow R-hat/ESS miss: twice the draws); 0: never.",
    ),
    Setting(
        "progressbar",
        False,
        Flag(),
        "Report the draws of every chain on stderr (the fit commands' default; -q: off).",
    ),
)


# Options of one analysis each, registered here too so the CLI reads them without
# importing the analysis (and its libraries) to build its --help.
ANALYSIS: dict[str, Setting] = _registry(
    Setting(
        "folds",
        5,
        IntIn(2, 1000),
        "Cross-validation folds (over participants) for the temperatures.",
    ),
    Setting(
        "rope",
        None,
        Maybe(FloatIn(0.0, math.inf, open_lo=True)),
        "Half-width of the region of practical equivalence "
        "[default: 0.01 nats, or 0.1 SD on the standardised scale].",
    ),
)


def _default(name: str) -> Any:
    return SAMPLING[name].default


def unknown_names(what: str, names: Iterable[str], known: Sequence[str]) -> OptionError:
    """The error for keyword names that are not ``known`` (with a "did you mean")."""
    bad = sorted(set(names) - set(known))
    hint = did_you_mean(bad[0], known) if bad else ""
    return OptionError(
        f"unknown {what} option{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}{hint}; "
        f"known: {', '.join(known)}"
    )


def field_names(cls: type) -> list[str]:
    """The field names of an options dataclass (what its ``of`` and the CLI accept)."""
    return [f.name for f in dataclasses.fields(cls)]


def options_of(cls: Any, value: Any, what: str) -> Any:
    """``value`` as an instance of the options dataclass ``cls``: itself, a mapping of its
    field names (unknown names refused with a "did you mean"), or None (the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise OptionError(f"{what} options must be {cls.__name__} or a dict, got {value!r}")
    known = field_names(cls)
    if set(value) - set(known):
        raise unknown_names(what, value, known)
    try:
        return cls(**value)
    except TypeError as e:  # a required field left out
        raise OptionError(f"{what} options: {e}") from None


def build_spec(cls: Any, spec: Any, options: Mapping[str, Any], what: str) -> Any:
    """An analysis spec (dataclass ``cls``) from ``spec`` (what ``cls.of`` takes, or None)
    with the named ``options`` overriding its fields: the one way the CLI and ``wh.fit``
    build a spec from option names."""
    known = field_names(cls)
    if set(options) - set(known):
        raise unknown_names(what, options, known)
    if spec is None:
        return options_of(cls, dict(options), what)
    base = cls.of(spec)
    return dataclasses.replace(base, **options) if options else base


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample: the same settings, defaults (:data:`SAMPLING`) and checks for every fit.

    ``redraws``: how many times a fit that misses its gates in a way sampling
    can mend samples again (``pipeline.next_attempt``); ``progressbar``: the
    draws of every chain on stderr through ``warehouse.progress`` (a bar on a
    terminal, plain lines in a log; ``stats.sampling_progress``), on in the
    fit commands unless ``-q``.
    """

    draws: int = _default("draws")
    tune: int = _default("tune")
    chains: int = _default("chains")
    seed: int = _default("seed")
    sampler: str = _default("sampler")
    target_accept: float = _default("target_accept")
    redraws: int = _default("redraws")
    progressbar: bool = _default("progressbar")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, SAMPLING[f.name].validate(getattr(self, f.name)))

    @classmethod
    def of(cls, value: SamplingOptions | Mapping[str, Any] | None) -> SamplingOptions:
        """``value`` as options: a mapping of field names (unknown names refused), or None."""
        return options_of(cls, value, "sampling")

    def replace(self, **changes: Any) -> SamplingOptions:
        """A copy with ``changes`` (validated like any other value)."""
        return dataclasses.replace(self, **changes)

    def sampler_kwargs(self) -> dict[str, Any]:
        """What one run of the sampler needs (everything but ``redraws``)."""
        out = dataclasses.asdict(self)
        out.pop("redraws")
        return out


# --------------------------------------------------------------------------- selection

PERSONA_CONDITION = "persona"  # persona's default post_condition
SELECTION_LISTS = ("models", "experiments", "families", "post_training")


def _text(name: str, value: Any) -> str:
    return validated(name, Text(), value)


def _names(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # one name, not its letters
        value = [value]
    if not isinstance(value, Iterable):
        raise OptionError(f"{name} must be a list of names, got {value!r}")
    return tuple(_text(name, v) for v in value)


@dataclass(frozen=True)
class Selection:
    """Which scores an analysis reads: conditions, models, experiments, families, types.

    Empty lists select everything.  ``post_condition``/``base_condition``
    override ``condition`` on one side of a pair (:attr:`post`, :attr:`base`);
    see the module docstring for how persona reads them.  ``post_training``:
    post-training types (instruct, reasoning, ...).
    """

    condition: str = "plain"
    post_condition: str | None = None
    base_condition: str | None = None
    models: tuple[str, ...] = ()
    experiments: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    post_training: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "condition", _text("condition", self.condition))
        for name in ("post_condition", "base_condition"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _text(name, v))
        for name in SELECTION_LISTS:
            object.__setattr__(self, name, _names(name, getattr(self, name)))

    @classmethod
    def of(cls, value: Selection | Mapping[str, Any] | None) -> Selection:
        """``value`` as a selection: a mapping of field names (unknown names refused), or None."""
        return options_of(cls, value, "selection")

    @property
    def post(self) -> str:
        """The condition of the post-trained models' scores."""
        return self.post_condition or self.condition

    @property
    def base(self) -> str:
        """The condition of the base models' scores (persona: of the plain scores)."""
        return self.base_condition or self.condition

    @property
    def label(self) -> str:
        """``fits.condition``: the condition, or ``"post vs base"`` when they differ."""
        return self.post if self.post == self.base else f"{self.post} vs {self.base}"

    def only(self, name: str) -> list[str] | None:
        """The names of list field ``name``, or None for "all" (what the queries take)."""
        return list(getattr(self, name)) or None

    def require(self, kind: str, allowed: Iterable[str]) -> None:
        """Refuse a list field ``kind`` cannot apply (rather than ignoring it)."""
        unused = [n for n in SELECTION_LISTS if n not in set(allowed) and getattr(self, n)]
        if unused:
            raise OptionError(
                f"fit {kind} cannot select by {', '.join(unused)}: it selects by "
                f"{', '.join(a for a in SELECTION_LISTS if a in set(allowed)) or 'condition only'}"
            )

    def check_names(self, con, *, conditions: Sequence[str] = ()) -> None:
        """'no such model/experiment/condition' (with "did you mean") before any work."""
        check_names(con, "model", self.models)
        check_names(con, "experiment", self.experiments)
        check_names(con, "condition", [c for c in conditions if c])

    def reads(self, *lists: str) -> dict[str, Any]:
        """The keywords of the score readers (``build_cells``, ``OptionGroups``, ...): the
        resolved conditions and the named list fields (None for "all")."""
        out: dict[str, Any] = {"post_condition": self.post, "base_condition": self.base}
        out.update({n: self.only(n) for n in lists})
        return out

    def record(self) -> dict[str, Any]:
        """The stored form (``fits.selection``): resolved conditions, lists or None."""
        return self.reads(*SELECTION_LISTS)


# --------------------------------------------------------------------------- analysis specs


class AnalysisSpec:
    """The base of the analyses' spec dataclasses (``PersonaSpec``, ...): built from
    itself, a mapping of its field names, or None (``of``), and from option names
    overriding a given spec (``from_options``, what the CLI and ``wh.fit`` call)."""

    KIND: ClassVar[str] = "analysis"

    @classmethod
    def of(cls, value: Any) -> Any:
        return options_of(cls, value, cls.KIND)

    @classmethod
    def from_options(cls, spec: Any = None, **options: Any) -> Any:
        return build_spec(cls, spec, options, cls.KIND)


# --------------------------------------------------------------------------- storing


@dataclass(frozen=True)
class StoreOptions:
    """Where a fit is stored: ``fits.name`` and the NetCDF folder (default ``<db>.fits/``)."""

    name: str | None = None
    netcdf_dir: str | Path | None = field(default=None)

    def __post_init__(self) -> None:
        validated("name", Maybe(Text()), self.name)
        validated("netcdf_dir", Maybe(PathOf("folder")), self.netcdf_dir)

    @classmethod
    def of(cls, value: StoreOptions | Mapping[str, Any] | None) -> StoreOptions:
        """``value`` as store options: a mapping of field names (unknown names refused), or None."""
        return options_of(cls, value, "store")

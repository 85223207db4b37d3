"""The fit contract's options (psystats.stats.options): one registry of defaults, total checks."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from psystats.stats.options import (
    MAX_DRAWS,
    MAX_SEED,
    SAMPLING,
    OptionError,
    SamplingOptions,
    Selection,
    StoreOptions,
)
from psystats.warehouse.errors import WarehouseError

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = [
    99999999999999999999,
    -(2**70),
    -1,
    1.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    "",
    "abc",
    "1e400",
    True,
    None,
    [1],
    object(),
]


def test_defaults_come_from_the_registry():
    opts = SamplingOptions()
    for name, setting in SAMPLING.items():
        assert getattr(opts, name) == setting.default, name
    assert opts.target_accept == 0.95 and opts.draws == 1000 and opts.redraws == 2


@pytest.mark.parametrize("name", ["draws", "tune", "chains", "seed", "redraws", "target_accept"])
@pytest.mark.parametrize("value", HOSTILE)
def test_every_hostile_value_is_an_option_error_naming_the_option(name, value):
    with pytest.raises(OptionError, match=f"^{name} must be"):
        SamplingOptions(**{name: value})


def test_values_of_other_types_that_mean_the_same_are_accepted():
    opts = SamplingOptions(draws="500", tune=1e3, chains=2.0, seed=MAX_SEED, target_accept="0.9")
    assert (opts.draws, opts.tune, opts.chains, opts.seed) == (500, 1000, 2, MAX_SEED)
    assert opts.target_accept == 0.9 and isinstance(opts.draws, int)
    assert SamplingOptions(draws=MAX_DRAWS).draws == MAX_DRAWS
    for bad in (MAX_DRAWS + 1, 0):
        with pytest.raises(OptionError, match=f"from 1 to {MAX_DRAWS}"):
            SamplingOptions(draws=bad)
    with pytest.raises(
        OptionError, match="sampler must be one of nutpie, pymc.*did you mean 'pymc'"
    ):
        SamplingOptions(sampler="pmc")
    with pytest.raises(OptionError, match="progressbar must be True or False"):
        SamplingOptions(progressbar="yes")


def test_replace_and_of_validate_and_refuse_unknown_names():
    opts = SamplingOptions(draws=10)
    assert opts.replace(target_accept=0.99).target_accept == 0.99 and opts.target_accept == 0.95
    with pytest.raises(OptionError, match="target_accept must be"):
        opts.replace(target_accept=math.nan)
    assert SamplingOptions.of(None) == SamplingOptions() and SamplingOptions.of(opts) is opts
    assert SamplingOptions.of({"chains": 2}).chains == 2
    with pytest.raises(OptionError, match=r"unknown sampling option 'target_acept' \(did you mean"):
        SamplingOptions.of({"target_acept": 0.9})
    with pytest.raises(OptionError, match="must be SamplingOptions or a dict"):
        SamplingOptions.of(5)  # type: ignore[arg-type]
    assert "redraws" not in opts.sampler_kwargs() and opts.sampler_kwargs()["draws"] == 10


def test_the_defaults_are_written_once():
    """No function in psystats gives a sampling setting its own default (the registry does;
    seeds of simulations and bootstraps are their own)."""
    offenders = []
    for path in (ROOT / "psystats").rglob("*.py"):
        if path.name == "options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults) :], a.defaults))
            pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            for arg, default in pairs:
                constant = isinstance(default, ast.Constant) and default.value is not None
                if (
                    constant
                    and arg.arg in set(SAMPLING) - {"seed", "progressbar"}
                    and (arg.arg != "draws" or default.value == SAMPLING["draws"].default)
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {arg.arg}")
    assert not offenders, offenders


# --------------------------------------------------------------------------- selection


def test_selection_resolves_each_side_once():
    s = Selection()
    assert (s.post, s.base, s.label) == ("plain", "plain", "plain")
    s = Selection(condition="chat", post_condition="persona")
    assert (s.post, s.base, s.label) == ("persona", "chat", "persona vs chat")
    s = Selection(models="qwen3-8b", experiments=["a", "b"])
    assert s.models == ("qwen3-8b",) and s.experiments == ("a", "b")
    assert s.only("models") == ["qwen3-8b"] and s.only("families") is None
    rec = s.record()
    assert rec["post_condition"] == "plain" and rec["models"] == ["qwen3-8b"]
    assert rec["post_training"] is None


@pytest.mark.parametrize(
    "kw",
    [
        {"condition": ""},
        {"condition": None},
        {"post_condition": "  "},
        {"models": [""]},
        {"experiments": [3]},
        {"families": 5},
    ],
    ids=repr,
)
def test_selection_refuses_what_is_not_a_name(kw):
    with pytest.raises(OptionError):
        Selection(**kw)


def test_selection_refuses_unknown_names_and_fields_an_analysis_cannot_apply():
    with pytest.raises(OptionError, match=r"unknown selection option 'model' \(did you mean"):
        Selection.of({"model": ["x"]})
    Selection(models=("a",)).require("effects", ["models", "experiments"])
    with pytest.raises(OptionError, match="fit effects cannot select by families"):
        Selection(families=("qwen",)).require("effects", ["models", "experiments"])
    assert issubclass(OptionError, WarehouseError)


def test_store_options(tmp_path):
    assert StoreOptions.of({"name": "n"}).name == "n"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OptionError, match="is a file, not a folder"):
        StoreOptions(netcdf_dir=f)
    with pytest.raises(OptionError, match="name must be a non-empty name"):
        StoreOptions(name=3)  # type: ignore[arg-type]

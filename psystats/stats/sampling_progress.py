"""Sampling progress: the draws of every chain on the one progress reporter.

nutpie and PyMC each draw a bar of their own on a terminal, and nothing a log
can use (or a flood of carriage returns) elsewhere.  A fit reports instead
through ``warehouse.progress``, like every other long job: a bar on a
terminal, plain lines when stderr is not one::

    sampling: 2,400/8,000 draws (30%) [per chain 600, 620, 580, 600 of 2,000], 240 draws/s, ...
    sampling: done, 8,000 draws in 0:33 (240 draws/s)

and nothing when ``SamplingOptions.progressbar`` is off (the fit commands'
``-q``; the library's default).  Draws count warm-up (tuning) draws too: that
is the work the time left is about, ``chains * (tune + draws)`` in all.

nutpie reports its chains through a text template it fills every
``NUTPIE_RATE_MS`` (outside a notebook it otherwise only draws its terminal
bar); PyMC calls back after every draw.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from psystats.warehouse.progress import Reporter, format_count, progress

from .options import SamplingOptions

# How often nutpie fills the template (milliseconds); the reporter throttles lines itself.
NUTPIE_RATE_MS = 500
# Draws done per chain, space-separated: what ChainDraws.nutpie_callback reads back.
NUTPIE_TEMPLATE = "{% for chain in chains %}{{ chain.finished_draws }} {% endfor %}"


class ChainDraws:
    """Draws done per chain, shown on ``reporter`` (the total and a per-chain breakdown)."""

    def __init__(self, reporter: Reporter, chains: int, per_chain: int) -> None:
        self.reporter = reporter
        self.per_chain = per_chain
        self.done = [0] * chains

    def update(self, done: Sequence[int]) -> None:
        """The draws each chain has finished so far (the first call starts the clock, so
        the rate and time left leave out PyMC's start-up of its worker processes)."""
        if not self.reporter.running:
            self.reporter.start()
        self.done = list(done)
        each = ", ".join(format_count(d) for d in self.done)
        self.reporter.set_detail(f"per chain {each} of {format_count(self.per_chain)}")
        self.reporter.advance(sum(self.done) - self.reporter.done)

    def pymc_callback(self, trace: Any, draw: Any) -> None:
        """PyMC's ``callback``: one more draw (warm-up or not) of chain ``draw.chain``."""
        done = list(self.done)
        done[draw.chain] += 1
        self.update(done)

    def nutpie_callback(self, formatted: str) -> None:
        """nutpie's template callback: ``NUTPIE_TEMPLATE`` filled in."""
        done = [int(n) for n in re.findall(r"\d+", formatted)]
        if len(done) == len(self.done):
            self.update(done)


@contextmanager
def chain_draws(opts: SamplingOptions) -> Iterator[ChainDraws]:
    """A reporter for one run of the sampler (silent unless ``opts.progressbar``)."""
    per_chain = opts.tune + opts.draws
    reporter = progress("sampling", opts.chains * per_chain, "draws", quiet=not opts.progressbar)
    ok = False
    try:
        yield ChainDraws(reporter, opts.chains, per_chain)
        ok = True
    finally:
        reporter.close(success=ok)


def sample_nutpie(compiled: Any, opts: SamplingOptions) -> Any:
    """``nutpie.sample`` (no warm-up saved) with the draws per chain on the reporter.

    Quiet: ``nutpie.sample`` itself, without a bar.  Otherwise the same
    sampler (same settings, seed, initial point and cores, so the same
    draws) started with a progress callback instead of nutpie's terminal bar.
    """
    import nutpie

    kwargs = dict(
        draws=opts.draws,
        tune=opts.tune,
        chains=opts.chains,
        seed=opts.seed,
        target_accept=opts.target_accept,
        save_warmup=False,
    )
    if not opts.progressbar:
        return nutpie.sample(compiled, progress_bar=False, **kwargs)
    with chain_draws(opts) as draws:
        sampler = _callback_sampler(compiled, opts, draws.nutpie_callback)
        if sampler is None:  # a nutpie whose internals differ: no progress until the end
            idata = nutpie.sample(compiled, progress_bar=False, **kwargs)
            draws.update([opts.tune + opts.draws] * opts.chains)  # nutpie ran them all
            return idata
        try:
            return sampler.wait()
        except BaseException:
            sampler.cancel()
            raise


def _callback_sampler(compiled: Any, opts: SamplingOptions, callback: Any) -> Any:
    """A started nutpie ``_BackgroundSampler`` reporting through ``callback``, built as
    ``nutpie.sample`` builds it (nutpie 0.13-0.16); None if this nutpie has other internals."""
    import numpy as np
    from nutpie import _lib
    from nutpie.sample import _BackgroundSampler

    class _Sampler(_BackgroundSampler):
        def __init__(self, settings: Any, cores: int) -> None:
            self._settings = settings
            self._compiled_model = compiled
            self._save_warmup = False
            self._return_raw_trace = False
            self._html = None
            self._store = _lib.PyStorage.arrow()
            kind = _lib.ProgressType.template_callback(
                NUTPIE_RATE_MS, NUTPIE_TEMPLATE, cores, callback
            )
            init_mean = np.zeros(compiled.n_dim)
            self._sampler = compiled._make_sampler(settings, init_mean, cores, kind, self._store)

    try:
        settings = _lib.PyNutsSettings.Diag(opts.seed)
        settings.num_tune = opts.tune
        settings.num_draws = opts.draws
        settings.num_chains = opts.chains
        settings.target_accept = opts.target_accept
        cores = min(opts.chains, os.cpu_count() or 1)
        return _Sampler(settings, cores)
    except (AttributeError, TypeError):
        return None

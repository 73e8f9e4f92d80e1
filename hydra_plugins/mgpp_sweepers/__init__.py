"""mgpp's Hydra sweeper plugin: Optuna sweeps that resume from their storage (Hydra finds plugins
only in the hydra_plugins namespace package, hence this folder beside mgpp/).

hydra-optuna-sweeper runs ``n_trials`` new trials on every launch, even when its SQLite study
already holds finished ones. :class:`ResumableOptunaSweeper` counts ``n_trials`` as the study's
total: a rerun after an interruption runs only the trials still missing (the interrupted one
again), and its sampler sees every finished trial. A continued study's sampler is
reseeded (a seeded one would propose its first trials again). It also creates the storage's
folder and keeps Optuna's own setup logging (database migrations, study creation) out of the output.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

try:  # the sweeps extra; Hydra imports every hydra_plugins module at start-up, so stay quiet without it
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover - only without mgpp[sweeps]
    OptunaSweeper = None

__all__ = ["ResumableOptunaSweeper"]


class _Missing:
    def __init__(self, *args, **kwargs):
        raise ImportError("sweep=optuna needs the sweeps extra: pip install 'mgpp[sweeps]'")


class ResumableOptunaSweeper(OptunaSweeper or _Missing):
    def sweep(self, arguments):
        import optuna

        impl = self.sweeper
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        storage = impl.storage
        if isinstance(storage, str) and storage.startswith("sqlite:///"):
            Path(storage[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        if storage:
            try:
                study = optuna.load_study(study_name=impl.study_name, storage=storage)
                done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
            except KeyError:  # no such study yet
                done = 0
            if done:
                log.info("optuna study %s: %d of %d trials finished in %s; running the rest", impl.study_name,
                         done, impl.n_trials, storage)
            impl.n_trials = max(impl.n_trials - done, 0)
            if impl.n_trials == 0:
                log.info("optuna study %s is complete", impl.study_name)
                return None
            if done and hasattr(impl.sampler, "reseed_rng"):
                # a seeded sampler would propose the first trials again: a fresh seed continues instead
                impl.sampler.reseed_rng()
        return super().sweep(arguments)

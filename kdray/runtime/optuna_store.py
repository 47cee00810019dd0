"""The search's Optuna study, persisted: The Optuna study of a study's search is named after the study (`Study.name`) and lives
in an RDB storage: `--optuna-storage URL`, else `$KDRAY_OPTUNA_STORAGE`, else `optuna.db` beside
a sqlite MLflow store (`sqlite:///<dir of mlflow.db>/optuna.db`), else `sqlite:///<cwd>/optuna.db`.
`none` (or `memory`) keeps Ray's in-memory study. `optuna-dashboard <URL>` opens it.

- A fresh run (no `--resume`) starts a new study: an existing one of the same name is first
  copied to `<name>@<UTC time>` and then deleted, so nothing is lost and TPE starts empty.
- `--resume` with a restorable Tune experiment: Tune restores its pickled OptunaSearch, which
  points at the same storage (docs/runtime.md §B.6). Without one (e.g. a new `--storage-path` or a lost
  `ray_results`), a new Tuner loads the study (TPE sees every earlier trial), marks trials left
  RUNNING by a dead driver as FAIL, and runs only the samples still missing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OPTUNA_STORAGE_ENV = "KDRAY_OPTUNA_STORAGE"
IN_MEMORY = ("", "none", "memory")
_SQLITE = "sqlite:///"


def optuna_storage_url(tracking_uri: str | None, explicit: str | None = None) -> str | None:
    """The Optuna storage URL of a study run (see the module doc); None means in-memory."""
    url = explicit if explicit is not None else os.environ.get(OPTUNA_STORAGE_ENV)
    if url is None:
        if tracking_uri and tracking_uri.startswith(_SQLITE) and ":memory:" not in tracking_uri:
            url = _SQLITE + str(Path(tracking_uri[len(_SQLITE):]).expanduser().parent
                                / "optuna.db")
        else:
            url = _SQLITE + "optuna.db"
    if url.strip().lower() in IN_MEMORY:
        return None
    if url.startswith(_SQLITE) and ":memory:" not in url:  # Tune pickles it: make it absolute
        url = _SQLITE + str(Path(url[len(_SQLITE):]).expanduser().resolve())
    return url


def redacted(url: str | None) -> str:
    """`url` without its password (for tags, logs and tables)."""
    if not url:
        return "in-memory"
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. a journal file path)
        return url


def _rdb(url: str):
    from optuna.storages import RDBStorage

    kw = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return RDBStorage(url, engine_kwargs=kw)


@dataclass
class OptunaSearchSetup:
    """What `optuna_search` prepared: the searcher, the samples still to run, the storage."""

    searcher: Any            # ray.tune.search.optuna.OptunaSearch
    num_samples: int         # samples still to run (a resumed study subtracts finished trials)
    storage_url: str | None  # None: in-memory
    study_name: str
    earlier_trials: int      # finished trials the study already held


def optuna_search(study_name: str, *, metric: str, mode: str, seed: int, num_samples: int,
                  storage_url: str | None, resume: bool,
                  tune_restores: bool = False) -> OptunaSearchSetup:
    """An OptunaSearch (TPE, seeded) on the persisted study `study_name`.

    `tune_restores`: Tune will restore the experiment (its pickled searcher is used instead of
    this one); the study is then left as it is.
    """
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    if storage_url is None:
        return OptunaSearchSetup(OptunaSearch(seed=seed), num_samples, None, study_name, 0)
    storage = _rdb(storage_url)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    earlier = 0
    if study_name in names and not tune_restores:
        old = optuna.load_study(study_name=study_name, storage=storage)
        if not resume:
            if old.trials:
                archive = f"{study_name}@{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
                optuna.copy_study(from_study_name=study_name, from_storage=storage,
                                  to_storage=storage, to_study_name=archive)
                log.warning("Optuna study %r in %s already had %d trials: copied to %r; this "
                            "run starts a new study (use --resume to continue it)",
                            study_name, redacted(storage_url), len(old.trials), archive)
            optuna.delete_study(study_name=study_name, storage=storage)
        else:
            for t in old.get_trials(deepcopy=False, states=(TrialState.RUNNING,
                                                            TrialState.WAITING)):
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # a dead driver's
            done = old.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                          TrialState.PRUNED))
            earlier = len(done)
            num_samples = max(0, num_samples - earlier)
            log.info("continuing Optuna study %r (%d finished trials): %d samples to run",
                     study_name, earlier, num_samples)
    sampler = optuna.samplers.TPESampler(seed=seed)
    searcher = OptunaSearch(sampler=sampler, study_name=study_name, storage=storage)
    # metric/mode come from TuneConfig (set_search_properties creates or loads the study)
    return OptunaSearchSetup(searcher, num_samples, storage_url, study_name, earlier)


def load_study(storage_url: str, study_name: str):
    import optuna

    return optuna.load_study(study_name=study_name, storage=_rdb(storage_url))


# ----------------------------------------------------------------------------- statistics

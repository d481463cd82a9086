"""The `postgres` fixture (tests/postgres.py): a real server that Optuna's RDB storage can share
between processes, as `mlpkit sweep --storage postgresql://...` will."""

from __future__ import annotations

import subprocess
import sys

import optuna
import psycopg
from optuna.trial import TrialState
from postgres import Postgres, libpq

# One sweep worker: joins the study the test created and runs 3 trials, warnings as errors.
WORKER = """\
import sys
import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
study = optuna.create_study(
    storage=url, study_name=name, load_if_exists=True,
    sampler=optuna.samplers.RandomSampler(seed=seed),
)
study.optimize(lambda trial: trial.suggest_float("x", -1.0, 1.0) ** 2, n_trials=3)
"""


def test_server_answers_select_1(postgres: Postgres) -> None:
    with psycopg.connect(libpq(postgres.url)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_new_database_is_fresh_each_time(postgres: Postgres) -> None:
    first, second = postgres.new_database(), postgres.new_database()
    assert first != second
    with psycopg.connect(libpq(second)) as conn:
        tables = conn.execute("select count(*) from pg_tables where schemaname = 'public'")
        assert tables.fetchone() == (0,)


def test_two_processes_share_one_optuna_study(postgres: Postgres) -> None:
    url = postgres.new_database()
    storage = optuna.storages.RDBStorage(url)
    try:
        # Created here first: two workers racing to create the schema on an empty database
        # could collide; joining an existing study with load_if_exists=True is the sweep's case.
        optuna.create_study(storage=storage, study_name="pg", direction="minimize")
        workers = [
            subprocess.Popen(
                [sys.executable, "-W", "error", "-c", WORKER, url, "pg", str(seed)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (1, 2)
        ]
        for worker in workers:
            _, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
        study = optuna.load_study(study_name="pg", storage=storage)
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert len(study.trials) == len(done) == 6
        assert sorted(t.number for t in done) == list(range(6))
    finally:
        storage.engine.dispose()

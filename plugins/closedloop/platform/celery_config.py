"""Celery configuration of the production profile (``[celery] celery_config_options``).

Airflow's default configuration, unchanged — plus, in a Celery *worker* process only, the
heavy libraries imported once before the worker forks its pool: every task is forked from
there, and starts in about a second instead of ~20 s of imports (see
:mod:`closedloop.platform.preload`). ``CLOSEDLOOP_PRELOAD=0`` turns it off.
"""

from __future__ import annotations

import importlib
import os
import sys

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

#: what the production profile's tasks load beyond the embedded profile's preload list
PRODUCTION_MODULES = (
    "feast.infra.online_stores.redis",
    "feast.infra.registry.sql",
    "psycopg",
    "psycopg2",
)

CELERY_CONFIG = dict(DEFAULT_CELERY_CONFIG)


def _is_worker(argv: list[str]) -> bool:
    return argv[1:3] == ["celery", "worker"]


if _is_worker(sys.argv) and os.environ.get("CLOSEDLOOP_PRELOAD", "1") != "0":
    from closedloop.platform.preload import preload

    preload()
    for _name in PRODUCTION_MODULES:
        importlib.import_module(_name)

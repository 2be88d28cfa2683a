"""Integration fixtures: Airflow's metadata DB (once per session) and loaded DAGs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def airflow_db() -> None:
    from closedloop.platform.airflow_runs import ensure_metadata_db

    ensure_metadata_db()


@pytest.fixture(scope="session")
def features_dag(airflow_db):
    from closedloop.platform.airflow_runs import load_dag

    return load_dag("hotel_bookings_features")

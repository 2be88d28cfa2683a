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


@pytest.fixture(scope="module")
def spark_home(tmp_path_factory):
    """``compute: spark`` settings of a fresh home, and the process's Spark session
    started from them (stopped after the module unless it was running before)."""
    from pyspark.sql import SparkSession

    from closedloop.core.settings import load_settings
    from closedloop.core.spark import session

    running = SparkSession.getActiveSession() is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOSEDLOOP_HOME", str(tmp_path_factory.mktemp("spark-home") / "home"))
        mp.setenv("CLOSEDLOOP_COMPUTE", "spark")
        settings = load_settings()
    spark = session(settings)
    yield settings
    if not running:
        spark.stop()

"""The ``spark`` compute setting: one set of Spark properties for Feast's Spark offline
store, its Spark compute engine and closedloop's own Spark jobs, and the process
environment Spark needs.

Feast creates the session from its store's ``spark_conf`` unless one is active, and the
engine reuses whichever exists, so both get the same properties from here and
:func:`session` (closedloop's own jobs) builds the same one. pyspark is imported lazily:
the ``local`` compute never pays for it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from closedloop.core.settings import Settings

#: the Java versions Spark 4 runs on
JAVA_VERSIONS = (17, 21)


# py4j logs every connection it opens and closes at INFO, the last one while the
# interpreter shuts down, when the log's stream may already be closed.
logging.getLogger("py4j").setLevel(logging.WARNING)


class SparkUnavailableError(RuntimeError):
    """``compute: spark`` without what Spark needs (pyspark, a Java 17 or 21)."""


def spark_conf(settings: Settings) -> dict[str, str]:
    """The Spark properties of ``settings``: the master, UTC session time (the offline
    tables' timestamps are UTC instants) and Parquet timestamps, no UI or console
    progress bars in task logs, loopback addresses for a local master; ``spark.conf``
    overrides them."""
    master = settings.spark.master
    conf = {
        "spark.master": master,
        "spark.app.name": f"closedloop-{settings.usecase.name}",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Parquet that Spark writes holds UTC microseconds, the offline tables' type,
        # which Arrow reads as such (not the legacy INT96, read as naive nanoseconds)
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # the Python the executors run: the one with closedloop, Feast and the model's
        # libraries (on a cluster, set it to the image's interpreter in spark.conf)
        "spark.pyspark.python": sys.executable,
    }
    if master.startswith("local"):
        conf |= {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            # a day's tables are small: Spark's default of 200 shuffle partitions costs
            # more in task start-up than it saves on two cores
            "spark.sql.shuffle.partitions": str(_local_cores(master) * 2),
        }
    secret = settings.spark.authenticate_secret
    if secret is not None:
        conf |= {
            "spark.authenticate": "true",
            "spark.authenticate.secret": secret.get_secret_value(),
        }
    return conf | dict(settings.spark.conf)


def _local_cores(master: str) -> int:
    found = re.fullmatch(r"local\[(\d+)(?:,\d+)?\]", master)
    if found:
        return int(found.group(1))
    return os.cpu_count() or 1


def prepare_environment(settings: Settings) -> None:
    """Set what Spark's launcher reads from the environment before a JVM starts, or
    raise :class:`SparkUnavailableError` naming what is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise SparkUnavailableError(
            "compute: spark needs pyspark: install closedloop's 'spark' extra "
            "(make env installs it)"
        ) from exc
    java_home = settings.spark.java_home or _env_path("JAVA_HOME")
    java = java_home / "bin" / "java" if java_home else _which("java")
    if java is None or not java.exists():
        raise SparkUnavailableError(
            f"compute: spark needs Java {' or '.join(map(str, JAVA_VERSIONS))}: "
            f"{'no ' + str(java) if java else 'no java on PATH and no JAVA_HOME'}; set "
            "spark.java_home (CLOSEDLOOP_SPARK__JAVA_HOME) or install "
            "openjdk-17-jre-headless"
        )
    version = java_version(java)
    if version not in JAVA_VERSIONS:
        raise SparkUnavailableError(
            f"compute: spark needs Java {' or '.join(map(str, JAVA_VERSIONS))}, {java} is "
            f"Java {version}; set spark.java_home (CLOSEDLOOP_SPARK__JAVA_HOME)"
        )
    # Feast warns at every call of its Spark store and source that they are experimental
    # (the compute setting chooses them knowingly); its store's module puts its own
    # RuntimeWarning filter first when imported, so this one goes in after that.
    import feast.infra.offline_stores.contrib.spark_offline_store.spark  # noqa: F401

    warnings.filterwarnings(
        "ignore", message=r"The spark (offline store|data source API) is an experimental feature"
    )
    os.environ["JAVA_HOME"] = str(java.resolve().parents[1])
    os.environ["PYSPARK_PYTHON"] = sys.executable
    if settings.spark.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


_JAVA_VERSIONS: dict[Path, int | None] = {}


def java_version(java: Path) -> int | None:
    """The major version ``java -version`` reports (cached per executable)."""
    if java not in _JAVA_VERSIONS:
        answer = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=60, check=False
        )
        found = re.search(r'version "(\d+)(?:\.(\d+))?', answer.stderr + answer.stdout)
        major = None
        if found:
            major = int(found.group(1))
            if major == 1 and found.group(2):  # "1.8.0": Java 8
                major = int(found.group(2))
        _JAVA_VERSIONS[java] = major
    return _JAVA_VERSIONS[java]


def offline_store_config(settings: Settings) -> dict[str, Any]:
    """Feast's Spark offline store, with closedloop's Spark properties."""
    return {
        "type": "spark",
        "spark_conf": spark_conf(settings),
        "staging_location": settings.spark_staging_location,
    }


def engine_config(settings: Settings) -> dict[str, Any]:
    """Feast's Spark compute engine (materialization), with the same properties."""
    return {
        "type": "spark.engine",
        "spark_conf": spark_conf(settings),
        "staging_location": settings.spark_staging_location,
        "partitions": settings.spark.online_write_partitions,
    }


def session(settings: Settings) -> Any:
    """The process's SparkSession for ``settings`` (the one Feast uses, if it made one
    first: both are built from :func:`spark_conf`)."""
    prepare_environment(settings)
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = SparkConf().setAll(list(spark_conf(settings).items()))
    return SparkSession.builder.config(conf=conf).getOrCreate()

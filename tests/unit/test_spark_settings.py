"""The ``spark`` compute setting: Feast's configuration, the Spark properties, and a clear
error before anything runs when Spark cannot start (no Java, the wrong Java)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from closedloop.core import spark
from closedloop.core.feature_store import repo_config
from closedloop.core.settings import load_settings


def _fake_java(folder, version: str):
    """A JDK folder whose ``bin/java -version`` reports ``version`` (as Java does, on
    stderr)."""
    java = folder / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2025-01-01' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.fixture(autouse=True)
def _restored_environment(monkeypatch):
    """``prepare_environment`` sets process variables: put back what was there."""
    for name in ("JAVA_HOME", "PYSPARK_PYTHON", "SPARK_LOCAL_IP"):
        monkeypatch.setenv(name, os.environ.get(name, ""))


def test_local_compute_keeps_feasts_file_store(home):
    config = repo_config(home)
    assert config.offline_store.type == "file"
    assert config.batch_engine_config == "local"


def test_spark_compute_configures_feasts_spark_store_and_engine(home, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_COMPUTE", "spark")
    monkeypatch.setenv("CLOSEDLOOP_SPARK__CONF", '{"spark.executor.memory": "3g"}')
    settings = load_settings()
    config = repo_config(settings)
    assert config.offline_store.type == "spark"
    assert config.batch_engine.type == "spark.engine"
    conf = config.offline_store.spark_conf
    assert conf == config.batch_engine.spark_conf
    assert conf["spark.master"] == "local[2]"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.pyspark.python"] == sys.executable
    assert conf["spark.executor.memory"] == "3g"  # the user's properties go over ours
    assert config.offline_store.staging_location == str(settings.home / "spark" / "staging")
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
    assert spark.java_version(java) in spark.JAVA_VERSIONS


def test_a_cluster_master_gets_no_loopback_addresses(home, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_SPARK__MASTER", "spark://spark-master:7077")
    conf = spark.spark_conf(load_settings())
    assert conf["spark.master"] == "spark://spark-master:7077"
    assert "spark.driver.host" not in conf and "spark.driver.bindAddress" not in conf


def test_a_missing_java_fails_naming_the_setting(home, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_COMPUTE", "spark")
    monkeypatch.setenv("CLOSEDLOOP_SPARK__JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(spark.SparkUnavailableError, match=r"spark\.java_home") as caught:
        repo_config(load_settings())
    assert "no-jdk" in str(caught.value)


def test_a_java_spark_does_not_run_on_fails_naming_its_version(home, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOSEDLOOP_COMPUTE", "spark")
    monkeypatch.setenv("CLOSEDLOOP_SPARK__JAVA_HOME", str(_fake_java(tmp_path / "jdk11", "11.0.2")))
    with pytest.raises(spark.SparkUnavailableError, match="is Java 11"):
        repo_config(load_settings())


def test_a_supported_java_is_taken_from_the_setting(home, tmp_path, monkeypatch):
    jdk = _fake_java(tmp_path / "jdk21", "21.0.4")
    monkeypatch.setenv("CLOSEDLOOP_SPARK__JAVA_HOME", str(jdk))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    spark.prepare_environment(load_settings())
    assert os.environ["JAVA_HOME"] == str(jdk.resolve())


def test_an_unknown_compute_is_refused_naming_the_field(home, monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("CLOSEDLOOP_COMPUTE", "ray")
    with pytest.raises(ValidationError, match="compute"):
        load_settings()

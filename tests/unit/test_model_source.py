"""Models are loaded only from the project's own registry: a registered version that
points anywhere but at a model this project's training logged is refused, before
anything is downloaded or unpickled (real MLflow registry on SQLite)."""

from __future__ import annotations

import pandas as pd
import pytest

from closedloop.core.errors import UntrustedModelError
from closedloop.core.registry import (
    CHAMPION,
    client_for,
    experiment_id,
    load_model,
    load_version,
    register_version,
    trusted_model_uri,
    use_mlflow,
)
from closedloop.core.settings import load_settings
from closedloop.core.tags import THRESHOLD

FRAME = pd.DataFrame({"lead_time": [1.0, 5.0, 20.0, 40.0, 80.0, 120.0]})
LABEL = pd.Series([0, 0, 0, 1, 1, 1])


def _fitted():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(FRAME, LABEL)


def _log(experiment: str) -> tuple[str, str]:
    """A run like the training pipeline's (threshold tag, skops model); its run id and
    model URI."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.set_tag(THRESHOLD, "0.5")
        info = mlflow.sklearn.log_model(
            _fitted(),
            name="model",
            serialization_format="skops",
            pip_requirements=["scikit-learn"],
        )
    return run.info.run_id, info.model_uri


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The project's model with one version its training logged and versions that point
    elsewhere — each of which MLflow itself would load."""
    import mlflow

    home = tmp_path_factory.mktemp("model-source")
    settings = load_settings(home=home)
    client = client_for(settings)
    use_mlflow(settings)
    project = experiment_id(settings)
    name = settings.model_name

    run_id, model_uri = _log(project)
    other_run, _ = _log(project)
    foreign_run, foreign_uri = _log(mlflow.create_experiment("someone-else/model"))
    path = home / "elsewhere"
    mlflow.sklearn.save_model(_fitted(), path, serialization_format="skops")
    with mlflow.start_run(run_id=other_run):  # a model among a run's own artifacts
        mlflow.log_artifacts(str(path), "model")

    def version(source: str, run: str, key: str) -> str:
        return register_version(client, name, source, run, key, tags={})

    versions = {
        "trained": version(model_uri, run_id, "trained"),
        "a path": version(path.as_uri(), run_id, "path"),
        "a run's artifacts": version(f"runs:/{other_run}/model", other_run, "runs"),
        "another experiment's model": version(foreign_uri, foreign_run, "foreign"),
        "a model another run logged": version(model_uri, other_run, "other-run"),
    }
    return settings, client, versions


def test_a_version_the_training_logged_loads(registry):
    settings, client, versions = registry
    version = versions["trained"]
    name = settings.model_name
    assert trusted_model_uri(client, settings, version) == f"models:/{name}/{version}"
    client.set_registered_model_alias(name, CHAMPION, version)
    loaded = load_model(settings)
    assert loaded.version == version
    assert loaded.feature_names == ["lead_time"]
    assert loaded.model.predict_proba(FRAME)[:, 1].round(6).tolist() == (
        _fitted().predict_proba(FRAME)[:, 1].round(6).tolist()
    )


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("a path", id="source-is-a-path"),
        pytest.param("a run's artifacts", id="source-is-runs-uri"),
        pytest.param("another experiment's model", id="model-of-another-experiment"),
        pytest.param("a model another run logged", id="run-did-not-log-it"),
    ],
)
def test_a_version_pointing_elsewhere_is_refused(registry, kind):
    import mlflow

    settings, client, versions = registry
    version = versions[kind]
    # MLflow itself would load it: the refusal is closedloop's
    use_mlflow(settings)
    assert mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version}") is not None

    with pytest.raises(UntrustedModelError, match=f"v{version}"):
        load_version(settings, version)
    client.set_registered_model_alias(settings.model_name, CHAMPION, version)
    try:
        with pytest.raises(UntrustedModelError, match="refusing to load it"):
            load_model(settings)
    finally:
        client.set_registered_model_alias(settings.model_name, CHAMPION, versions["trained"])


@pytest.mark.parametrize(
    "version",
    [
        pytest.param("1/../../elsewhere", id="path-traversal"),
        pytest.param("file:///tmp/model", id="a-uri"),
        pytest.param("champion", id="an-alias"),
    ],
)
def test_only_a_version_number_is_accepted(registry, version):
    settings, client, _ = registry
    with pytest.raises(UntrustedModelError, match="is not a version number"):
        trusted_model_uri(client, settings, version)

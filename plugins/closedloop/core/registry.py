"""The model registry by aliases (MLflow RFC #10336): ``champion`` serves, ``challenger``
holds a rejected candidate, ``previous`` the champion before the current one.

Every alias move goes through :func:`apply_decision` or :func:`rollback`, which also
append it to the promotion ledger. A version that was not blessed by the gate can never
receive ``champion`` here: :func:`apply_decision` only moves it for a blessed decision.
:func:`load_model` is the one way a version is loaded to score (batch inference,
serving, monitoring).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from closedloop.core import tags as tag
from closedloop.core.errors import NoChampionError, UntrustedModelError
from closedloop.core.ledger import LedgerEntry, PromotionLedger, now

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from closedloop.core.gate import GateDecision
    from closedloop.core.settings import Settings

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
#: the arm of a prediction-log record scored beside the served one and never answered
#: (``closedloop serve --shadow``); readers of served traffic leave it out
SHADOW = "shadow"
#: the source closedloop's training registers: an MLflow 3 logged model, by id
LOGGED_MODEL = re.compile(r"models:/(m-[0-9a-f]+)")


class RollbackError(RuntimeError):
    """There is nothing to roll back to."""


def client_for(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def use_mlflow(settings: Settings) -> None:
    """Point MLflow's fluent API (``mlflow.start_run``, ``mlflow.sklearn.load_model``, ...)
    at the settings' tracking server *and* registry.

    That API keeps both URIs process-wide, and a registry URI set by an earlier caller
    wins over the tracking URI: every entry point that uses it calls this first.
    """
    import mlflow

    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)


def experiment_name(settings: Settings, suffix: str = "") -> str:
    return f"closedloop/{settings.usecase.name}{suffix}"


def experiment_id(settings: Settings, suffix: str = "") -> str:
    """The MLflow experiment ``closedloop/<use case><suffix>``, created on first use with
    its artifacts under the home folder in the embedded profile (the server's artifact
    store in production)."""
    import mlflow

    name = experiment_name(settings, suffix)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if settings.profile == "embedded":
        location = (settings.mlflow_dir / "artifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def alias_version(client: MlflowClient, model: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None (no model, or no such alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_registered_model(model).aliases.get(alias) or "") or None
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def register_version(
    client: MlflowClient,
    model: str,
    model_uri: str,
    run_id: str,
    dag_run_key: str,
    tags: dict[str, str],
) -> str:
    """Register ``model_uri`` once per DAG run: a retried task finds its version again,
    and a second version registered for the same DAG run is deleted."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model, tags={tag.MANAGED: "true"})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    if not _versions_of_run(client, model, dag_run_key):
        # An MLflow 3 logged model (``models:/m-<id>``) must be named by id too: a tracking
        # server rejects the source alone (a local SQLite store does not check).
        logged = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        client.create_model_version(
            model,
            model_uri,
            run_id=run_id,
            tags={**tags, tag.DAG_RUN_ID: dag_run_key},
            model_id=logged,
        )
    # Looking first does not make registering happen once: MLflow's client sends a POST
    # again when its answer was lost (its HTTP retries cover POST), and a task whose
    # worker was killed can still be running beside its retry. Either registers a second
    # version for the DAG run; the first one registered stays, the others go.
    first, *extra = _versions_of_run(client, model, dag_run_key)
    for version in extra:
        try:
            client.delete_model_version(model, version)
        except MlflowException as exc:  # the other process deleted it first
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    return first


def _versions_of_run(client: MlflowClient, model: str, dag_run_key: str) -> list[str]:
    """The versions registered for one DAG run, oldest first."""
    found = client.search_model_versions(f"name = '{model}'")
    return [
        str(v)
        for v in sorted(
            int(mv.version) for mv in found if mv.tags.get(tag.DAG_RUN_ID) == dag_run_key
        )
    ]


def apply_decision(
    client: MlflowClient,
    ledger: PromotionLedger,
    model: str,
    version: str,
    decision: GateDecision,
    *,
    dag_id: str | None,
    run_id: str | None,
    note: str | None = None,
    actor: str | None = None,
) -> str:
    """Move aliases as the gate decided, tag the version and record the move (``note``,
    e.g. who approved it, is added to the ledger's reason; ``actor``, who moved it:
    ``dag:<dag id>`` by default).

    Idempotent: applying the same decision again (a retried task) changes nothing, and a
    retry of a task killed after the aliases moved but before the ledger heard of it
    records the move the first attempt made (the version it replaced is ``previous`` by
    then), so :func:`rollback` can still walk back.
    """
    from closedloop.core import failpoints

    numbers = {"candidate": decision.candidate, "champion": decision.champion}
    actor = actor or (f"dag:{dag_id}" if dag_id else None)
    client.set_model_version_tag(model, version, tag.BLESSED, str(decision.blessed).lower())
    client.set_model_version_tag(model, version, tag.GATE, decision.summary()[:4900])
    current = alias_version(client, model, CHAMPION)
    if decision.blessed:
        if current != version:
            replaced = current
            if current is not None:
                client.set_registered_model_alias(model, PREVIOUS, current)
            mark_move(client, model, version, CHAMPION)
            client.set_registered_model_alias(model, CHAMPION, version)
        else:  # a retry: an earlier attempt moved the alias
            replaced = alias_version(client, model, PREVIOUS)
        if alias_version(client, model, CHALLENGER) == version:
            client.delete_registered_model_alias(model, CHALLENGER)
        failpoints.hold("gate.aliases_moved")
        ledger.append(
            LedgerEntry(
                model,
                CHAMPION,
                version,
                replaced,
                "promote",
                f"{decision.summary()}; {note}" if note else decision.summary(),
                numbers,
                dag_id,
                run_id,
                now(),
                actor,
            )
        )
        return "promoted"
    previous_challenger = alias_version(client, model, CHALLENGER)
    mark_move(client, model, version, CHALLENGER)
    client.set_registered_model_alias(model, CHALLENGER, version)
    client.set_model_version_tag(
        model, version, tag.REJECTION_REASON, "; ".join(decision.reasons)[:4900]
    )
    failpoints.hold("gate.aliases_moved")
    ledger.append(
        LedgerEntry(
            model,
            CHALLENGER,
            version,
            previous_challenger if previous_challenger != version else None,
            "challenger",
            decision.summary(),
            numbers,
            dag_id,
            run_id,
            now(),
            actor,
        )
    )
    return "challenger"


def mark_move(client: MlflowClient, model: str, version: str, alias: str) -> None:
    """Say on ``version``, before ``alias`` moves to it, that closedloop is moving it
    (:data:`~closedloop.core.tags.ALIAS_MOVE`): between the move and its ledger entry,
    :mod:`closedloop.core.alias_watch` sees a move in flight, not one made by hand."""
    import json

    moving = json.dumps({"alias": alias, "at": now().isoformat()})
    client.set_model_version_tag(model, version, tag.ALIAS_MOVE, moving)


def rollback(
    client: MlflowClient,
    ledger: PromotionLedger,
    model: str,
    reason: str = "manual rollback",
    *,
    actor: str | None = None,
) -> tuple[str, str]:
    """Move ``champion`` back to the blessed version it replaced; returns (from, to).
    ``actor`` (``user:<name>``) is who asked.

    The ledger says which version that was (the ``from_version`` of the promotion that
    made the current champion), so rolling back twice walks further back in history.
    """
    current = alias_version(client, model, CHAMPION)
    if current is None:
        raise RollbackError(f"model {model!r} has no champion to roll back")
    history = ledger.history(model)
    promoted = [e for e in history if e.action == "promote" and e.version == current]
    target = promoted[-1].from_version if promoted else None
    if target is None:
        raise RollbackError(f"champion v{current} of {model!r} replaced no earlier version")
    mark_move(client, model, target, CHAMPION)
    client.set_registered_model_alias(model, CHAMPION, target)
    client.set_model_version_tag(model, current, tag.ROLLED_BACK, "true")
    before_target = [e for e in history if e.action == "promote" and e.version == target]
    if before_target and before_target[-1].from_version:
        client.set_registered_model_alias(model, PREVIOUS, before_target[-1].from_version)
    else:
        client.delete_registered_model_alias(model, PREVIOUS)
    ledger.append(
        LedgerEntry(
            model,
            CHAMPION,
            target,
            current,
            "rollback",
            reason,
            {"rolled_back": current},
            None,
            None,
            now(),
            actor,
        )
    )
    return current, target


def version_run_tags(client: MlflowClient, model: str, version: str) -> dict[str, Any]:
    """The tags of the MLflow run that produced a model version (its lineage)."""
    mv = client.get_model_version(model, version)
    return dict(client.get_run(mv.run_id).data.tags)


def trusted_model_uri(client: MlflowClient, settings: Settings, version: str) -> str:
    """``models:/<the use case's model>/<version>``, once the version is known to be a model
    this project's training logged; raises :class:`UntrustedModelError` otherwise.

    A registered version can point at any artifact location (``create_model_version``
    takes any source: a path, a bucket, another project's model), and ``models:/name/N``
    loads whatever it points at. So before anything is loaded, the version must point at
    an MLflow logged model (``models:/m-<id>``, what :func:`register_version` registers)
    that the version's own run logged, in this use case's experiment. The name and the
    registry come from the settings only; no caller passes a URI.
    """
    name = settings.model_name
    where = f"{name} v{version}"
    if not str(version).isdigit():
        raise UntrustedModelError(f"{version!r} is not a version number of {name!r}")
    mv = client.get_model_version(name, str(version))
    found = LOGGED_MODEL.fullmatch(mv.source or "")
    if found is None:
        raise UntrustedModelError(
            f"{where} points at {mv.source!r}, not at a model logged by a training run of "
            "this project: refusing to load it"
        )
    logged = client.get_logged_model(found.group(1))
    experiment = client.get_experiment(logged.experiment_id).name
    if experiment != experiment_name(settings):
        raise UntrustedModelError(
            f"{where} is model {logged.model_id} of experiment {experiment!r}, not of "
            f"{experiment_name(settings)!r}: refusing to load it"
        )
    if not mv.run_id or logged.source_run_id != mv.run_id:
        raise UntrustedModelError(
            f"{where} names run {mv.run_id!r}, but its model {logged.model_id} was logged by "
            f"run {logged.source_run_id!r}: refusing to load it"
        )
    return f"models:/{name}/{version}"


def load_version(settings: Settings, version: str) -> Any:
    """The fitted model of ``version`` of the use case's registered model, from the
    settings' registry, after :func:`trusted_model_uri` has accepted it."""
    import mlflow

    uri = trusted_model_uri(client_for(settings), settings, version)
    use_mlflow(settings)
    # skops looks up objects without a module (numpy ufuncs) in every loaded module; in
    # an Airflow task that touches ~1,000 deprecated Airflow aliases, each a warning
    # logged through the task's log socket. They say nothing about the model.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.sklearn.load_model(uri)


@dataclass(frozen=True)
class LoadedModel:
    """A registered model version, ready to score: the fitted pipeline, the decision
    threshold its training run chose and the input columns it was fitted on."""

    name: str
    version: str
    model: Any
    threshold: float
    feature_names: list[str]
    #: the alias it was loaded through; batch records carry it as their A/B arm
    alias: str = CHAMPION


def load_model(settings: Settings, alias: str = CHAMPION) -> LoadedModel:
    """The version ``alias`` points at in the project's registry, with its threshold.

    Raises :class:`NoChampionError` when the model or the alias does not exist, and
    :class:`~closedloop.core.errors.UntrustedModelError` when the version points at
    anything but a model this project's training logged
    (:func:`~closedloop.core.registry.trusted_model_uri`).
    """
    import mlflow

    name, uri = settings.model_name, settings.mlflow_tracking_uri
    client = client_for(settings)
    version = alias_version(client, name, alias)
    if version is None:
        raise NoChampionError(
            f"registered model {name!r} has no version under the alias {alias!r} in the "
            f"registry at {uri}: train and promote one first (the training DAG)"
        )
    run_id = client.get_model_version(name, version).run_id
    tags = client.get_run(run_id).data.tags
    if tag.THRESHOLD not in tags:
        raise ValueError(
            f"{name} v{version} (run {run_id}) has no {tag.THRESHOLD!r} tag: it was not "
            "trained by closedloop's training pipeline"
        )
    # only a model this project's training logged (UntrustedModelError otherwise)
    model = load_version(settings, version)
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        info = mlflow.models.get_model_info(f"models:/{name}/{version}")
        names = info.signature.inputs.input_names() if info.signature else None
    if names is None or len(names) == 0:
        raise ValueError(f"{name} v{version} does not say which columns it reads")
    return LoadedModel(name, version, model, float(tags[tag.THRESHOLD]), list(names), alias)

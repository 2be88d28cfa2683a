"""``closedloop users sync``: the roles declaration (:mod:`closedloop.core.roles`) applied
to the running stack's MLflow tracking server, through its basic-auth API
(``mlflow.server.get_app_client("basic-auth", ...)``, as the stack's admin).

For each declared user: the user exists (created with the declared password; a password
that no longer logs in is updated), is not an MLflow admin, and has on each experiment of
each use case (``closedloop/<name>``, ``/monitoring``, ``/shadow``) and on each use case's
registered model exactly its role's level. A user closedloop created and the declaration
no longer names is deleted: it is refused from then on. Which users closedloop manages is
kept in the closedloop database (``closedloop_managed_users``), so users made by other
means are never touched. Every change is returned as a line; a second run returns none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from closedloop.core.roles import Roles
    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)

#: the experiments of a use case, by suffix of ``closedloop/<use case>``
EXPERIMENT_SUFFIXES = ("", "/monitoring", "/shadow")

_METADATA = sa.MetaData()
MANAGED = sa.Table(
    "closedloop_managed_users",
    _METADATA,
    sa.Column("system", sa.String(32), primary_key=True),  # "mlflow"
    sa.Column("name", sa.String(256), primary_key=True),
)


@dataclass(frozen=True)
class Resource:
    kind: str  # MLflow's resource type: "experiment" | "registered_model"
    id: str  # an experiment id, a model name
    label: str  # for a person


def mlflow_resources(settings: Settings, client: Any) -> list[Resource]:
    """Every use case's experiments and registered model, created if missing (a grant
    needs the resource's id)."""
    from mlflow.exceptions import MlflowException

    from closedloop.core.settings import usecase_files

    chosen = settings.usecase_file is not None or settings.usecase_name is not None
    each = [settings] if chosen else [settings.for_usecase(n) for n in usecase_files(
        settings.usecases_dir)]  # fmt: skip
    out = []
    for one in each:
        usecase = one.usecase
        name = usecase.name
        for suffix in EXPERIMENT_SUFFIXES:
            label = f"closedloop/{name}{suffix}"
            found = client.get_experiment_by_name(label)
            experiment = found.experiment_id if found else client.create_experiment(label)
            out.append(Resource("experiment", str(experiment), label))
        model = usecase.model_name
        try:
            client.get_registered_model(model)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(model)
        out.append(Resource("registered_model", model, f"model {model}"))
    return out


def sync_mlflow(settings: Settings, roles: Roles) -> list[str]:
    """Apply ``roles`` to the settings' MLflow server (see the module); the changes."""
    from mlflow.server import get_app_client

    from closedloop.core.registry import client_for

    uri = settings.mlflow_tracking_uri
    auth = get_app_client("basic-auth", tracking_uri=uri)
    # the registry too at this server: MLflow's own default is process-wide state
    resources = mlflow_resources(settings, client_for(settings))
    engine = sa.create_engine(settings.closedloop_db, future=True)
    _METADATA.create_all(engine, checkfirst=True)
    changes: list[str] = []
    try:
        for name, user in roles.users.items():
            changes += _user(auth, uri, name, user.password())
            with engine.begin() as conn:
                if not conn.scalar(sa.select(sa.func.count()).select_from(MANAGED).where(
                        MANAGED.c.system == "mlflow", MANAGED.c.name == name)):  # fmt: skip
                    conn.execute(MANAGED.insert().values(system="mlflow", name=name))
            role = roles.role_of(name)
            for resource in resources:
                want = (
                    role.mlflow.experiments
                    if resource.kind == "experiment"
                    else role.mlflow.registered_model
                )
                changes += _permission(auth, name, resource, want)
        with engine.begin() as conn:
            managed = conn.scalars(
                sa.select(MANAGED.c.name).where(MANAGED.c.system == "mlflow")
            ).all()
        for name in sorted(set(managed) - set(roles.users)):
            changes += _delete(auth, name)
            with engine.begin() as conn:
                conn.execute(
                    MANAGED.delete().where(MANAGED.c.system == "mlflow", MANAGED.c.name == name)
                )
    finally:
        engine.dispose()
    return changes


def _user(auth: Any, uri: str, name: str, password: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        found = auth.get_user(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(name, password)
        return [f"mlflow: created user {name}"]
    changes = []
    if not logs_in(uri, name, password):
        auth.update_user_password(name, password)
        changes.append(f"mlflow: {name}: password updated")
    if found.is_admin:
        auth.update_user_admin(name, False)
        changes.append(f"mlflow: {name}: no longer an admin")
    return changes


def _permission(auth: Any, name: str, resource: Resource, want: str) -> list[str]:
    """Give ``name`` exactly ``want`` on ``resource``: a grant of closedloop's own is
    revoked and granted again when the level differs."""
    from mlflow.exceptions import MlflowException

    have = auth.get_user_permission(name, resource.kind, resource.id).permission
    if have == want:
        return []
    try:
        auth.revoke_user_permission(name, resource.kind, resource.id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    if want != "NO_PERMISSIONS":
        auth.grant_user_permission(name, resource.kind, resource.id, want)
    now = auth.get_user_permission(name, resource.kind, resource.id).permission
    if now != want:
        raise RuntimeError(
            f"{name} has {now} on {resource.label} after granting {want}: another grant "
            "(a role assigned in MLflow) decides; remove it or change the declaration"
        )
    return [f"mlflow: {name}: {resource.label} {have} -> {want}"]


def _delete(auth: Any, name: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        auth.delete_user(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return []
    return [f"mlflow: deleted user {name} (no longer declared)"]


def logs_in(uri: str, name: str, password: str) -> bool:
    """Whether ``name`` / ``password`` pass the server's basic auth (any answer but 401)."""
    import requests

    response = requests.get(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        auth=(name, password),
        timeout=30,
    )
    return response.status_code != 401

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

:func:`sync_airflow` does the same in Airflow, whose production auth manager is FAB's,
through its REST API (``/auth/fab/v1``, as the stack's ``admin``): each role that may see
a DAG becomes a FAB role ``closedloop_<role>`` holding exactly :func:`airflow_permissions`,
and each of its users has that role (and ``Admin`` when the role administers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from closedloop.core.roles import Role, Roles
    from closedloop.core.settings import Settings

log = logging.getLogger(__name__)

#: the experiments of a use case, by suffix of ``closedloop/<use case>``
EXPERIMENT_SUFFIXES = ("", "/monitoring", "/shadow")

_METADATA = sa.MetaData()
MANAGED = sa.Table(
    "closedloop_managed_users",
    _METADATA,
    sa.Column("system", sa.String(32), primary_key=True),  # "mlflow" | "airflow"
    sa.Column("name", sa.String(256), primary_key=True),
)


@dataclass(frozen=True)
class Resource:
    kind: str  # MLflow's resource type: "experiment" | "registered_model"
    id: str  # an experiment id, a model name
    label: str  # for a person


def _each_usecase(settings: Settings) -> list[Settings]:
    """The chosen use case's settings, else every declared use case's."""
    from closedloop.core.settings import usecase_files

    if settings.usecase_file is not None or settings.usecase_name is not None:
        return [settings]
    return [settings.for_usecase(name) for name in usecase_files(settings.usecases_dir)]


def mlflow_resources(settings: Settings, client: Any) -> list[Resource]:
    """Every use case's experiments and registered model, created if missing (a grant
    needs the resource's id)."""
    from mlflow.exceptions import MlflowException

    out = []
    for one in _each_usecase(settings):
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
            _manage(engine, "mlflow", name)
            role = roles.role_of(name)
            for resource in resources:
                want = (
                    role.mlflow.experiments
                    if resource.kind == "experiment"
                    else role.mlflow.registered_model
                )
                changes += _permission(auth, name, resource, want)
        for name in sorted(set(_managed(engine, "mlflow")) - set(roles.users)):
            changes += _delete(auth, name)
            _unmanage(engine, "mlflow", name)
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


# --- Airflow (FAB auth manager) -------------------------------------------------------

#: the FAB roles closedloop manages: ``closedloop_<role>``
AIRFLOW_ROLE_PREFIX = "closedloop_"
#: FAB's resources (airflow.providers.fab.www.security.permissions)
DAGS, DAG_PREFIX, DAG_RUN_PREFIX = "DAGs", "DAG:", "DAG Run:"
DAG_RUNS, TASK_INSTANCES, HITL_DETAIL = "DAG Runs", "Task Instances", "HITL Detail"

Permission = tuple[str, str]  # (FAB action, FAB resource)


def airflow_permissions(
    role: Role, stage_dags: dict[str, list[str]], base: set[Permission]
) -> set[Permission]:
    """The FAB permissions that give ``role`` its Airflow rights on the DAGs of each stage
    (``stage_dags``: stage -> every use case's DAG id). ``base`` is what every closedloop
    role reads besides DAGs (FAB's ``Viewer`` without its right to read every DAG).

    FAB checks a DAG's sub-entities in two parts: the DAG's own ``DAG:<id>`` (read for
    GET, edit otherwise) and the entity type for every DAG (``DAG Runs``, ``Task
    Instances``, ``HITL Detail``). Only runs have a per-DAG form, ``DAG Run:<id>``: so
    triggering is per DAG, and clearing and answering are per DAG through ``DAG:<id>``'s
    edit (hence the declaration's rule that clear covers every DAG the role edits)."""
    rights = role.airflow
    out = set(base)
    for stage in rights.see:
        out |= {("can_read", f"{DAG_PREFIX}{dag}") for dag in stage_dags[stage]}
    for stage in rights.edits:
        out |= {("can_edit", f"{DAG_PREFIX}{dag}") for dag in stage_dags[stage]}
    for stage in rights.trigger:
        out |= {("can_create", f"{DAG_RUN_PREFIX}{dag}") for dag in stage_dags[stage]}
    if rights.clear:
        out |= {("can_edit", DAG_RUNS), ("can_edit", TASK_INSTANCES)}
    if rights.approve:
        out |= {("can_read", HITL_DETAIL), ("can_edit", HITL_DETAIL)}
    return out


def base_permissions(viewer: set[Permission]) -> set[Permission]:
    """FAB's ``Viewer`` permissions without those on every DAG."""
    per_dag = (DAG_PREFIX, DAG_RUN_PREFIX)
    return {(a, r) for a, r in viewer if r != DAGS and not r.startswith(per_dag)}


class AirflowApi:
    """Airflow's REST API as its ``admin`` (the FAB auth manager's routes included)."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        token = self.login(user, password)
        if token is None:
            raise RuntimeError(f"Airflow at {self.base} refused {user}'s login")
        self.headers = {"Authorization": f"Bearer {token}"}

    def login(self, user: str, password: str) -> str | None:
        """A token for ``user``, or None when the server refuses the password."""
        import requests

        answer = requests.post(f"{self.base}/auth/token", timeout=60,
                               json={"username": user, "password": password})  # fmt: skip
        if answer.status_code == 401:
            return None
        answer.raise_for_status()
        return answer.json()["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, **params: Any) -> Any:
        """The JSON answer of FAB's ``path`` (or Airflow's own, from ``/api/v2``); None
        for a 404 (the caller asked whether it exists)."""
        import requests

        url = f"{self.base}{path}" if path.startswith("/api/") else f"{self.base}/auth/fab/v1{path}"
        answer = requests.request(method, url, json=body,
                                  params=params, headers=self.headers, timeout=60)  # fmt: skip
        if answer.status_code == 404:
            return None
        if answer.status_code >= 400:
            raise RuntimeError(f"Airflow {method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json() if answer.content else {}

    def pages(self, path: str, key: str) -> list[dict]:
        items: list[dict] = []
        while True:
            page = self.call("GET", path, limit=100, offset=len(items))
            items += page[key]
            if not page[key] or len(items) >= page["total_entries"]:
                return items


def _pairs(actions: list[dict]) -> set[Permission]:
    return {(a["action"]["name"], a["resource"]["name"]) for a in actions}


def _actions(pairs: set[Permission]) -> list[dict]:
    return [{"action": {"name": a}, "resource": {"name": r}} for a, r in sorted(pairs)]


def sync_airflow(settings: Settings, roles: Roles) -> list[str]:
    """Apply ``roles`` to the settings' Airflow API server (see the module); the changes.
    Run it once the DAG processor has parsed the use cases' DAGs: FAB creates a DAG's
    ``DAG:<id>`` permissions when it first parses it."""
    from closedloop.core.roles import STAGES
    from closedloop.platform.stack import AIRFLOW_ADMIN

    password = os.environ.get("CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD", "")
    if not password:
        raise RuntimeError("CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD is not set: sync runs as admin")
    api = AirflowApi(settings.airflow_api_url, AIRFLOW_ADMIN, password)
    stage_dags = {s: [one.usecase.dag_ids[s] for one in _each_usecase(settings)] for s in STAGES}
    viewer = api.call("GET", "/roles/Viewer")
    if viewer is None:
        raise RuntimeError("Airflow has no Viewer role: is its auth manager FAB's?")
    base = base_permissions(_pairs(viewer["actions"]))
    known = _pairs(api.pages("/permissions", "actions"))
    wanted = {
        f"{AIRFLOW_ROLE_PREFIX}{name}": airflow_permissions(role, stage_dags, base)
        for name, role in roles.roles.items()
        if role.airflow.any
    }
    unknown = sorted({r for pairs in wanted.values() for _, r in pairs - known})
    if unknown:
        raise RuntimeError(
            f"Airflow knows no {', '.join(unknown)} yet: sync once its DAG processor has "
            "parsed every use case's DAGs"
        )
    changes: list[str] = []
    for name, pairs in wanted.items():
        changes += _airflow_role(api, name, pairs)
    for role in api.pages("/roles", "roles"):
        if role["name"].startswith(AIRFLOW_ROLE_PREFIX) and role["name"] not in wanted:
            api.call("DELETE", f"/roles/{role['name']}")
            changes.append(f"airflow: deleted role {role['name']} (no longer declared)")

    engine = sa.create_engine(settings.closedloop_db, future=True)
    _METADATA.create_all(engine, checkfirst=True)
    try:
        declared = {n for n, u in roles.users.items() if roles.roles[u.role].airflow.any}
        for name in sorted(declared):
            role = roles.role_of(name)
            fab_roles = [f"{AIRFLOW_ROLE_PREFIX}{roles.users[name].role}"]
            fab_roles += ["Admin"] if role.airflow.admin else []
            changes += _airflow_user(api, name, roles.users[name].password(), fab_roles)
            _manage(engine, "airflow", name)
        for name in sorted(set(_managed(engine, "airflow")) - declared):
            if api.call("DELETE", f"/users/{name}") is not None:
                changes.append(f"airflow: deleted user {name} (no longer declared)")
            _unmanage(engine, "airflow", name)
        connections = {u.airflow_connection: (n, u.password())
                       for n, u in roles.users.items() if u.airflow_connection}  # fmt: skip
        for conn_id, (name, user_password) in sorted(connections.items()):
            changes += _mlflow_connection(api, conn_id, settings.mlflow_tracking_uri, name,
                                          user_password)  # fmt: skip
            _manage(engine, "airflow-connection", conn_id)
        for conn_id in sorted(set(_managed(engine, "airflow-connection")) - set(connections)):
            if api.call("DELETE", f"/api/v2/connections/{conn_id}") is not None:
                changes.append(f"airflow: deleted connection {conn_id} (no longer declared)")
            _unmanage(engine, "airflow-connection", conn_id)
    finally:
        engine.dispose()
    return changes


def _airflow_role(api: AirflowApi, name: str, pairs: set[Permission]) -> list[str]:
    found = api.call("GET", f"/roles/{name}")
    if found is None:
        api.call("POST", "/roles", {"name": name, "actions": _actions(pairs)})
        return [f"airflow: created role {name} ({len(pairs)} permissions)"]
    have = _pairs(found["actions"])
    if have == pairs:
        return []
    api.call("PATCH", f"/roles/{name}", {"name": name, "actions": _actions(pairs)},
             update_mask="actions")  # fmt: skip
    added, removed = sorted(pairs - have), sorted(have - pairs)
    words = [f"+{a} {r}" for a, r in added] + [f"-{a} {r}" for a, r in removed]
    return [f"airflow: role {name}: {', '.join(words)}"]


def _airflow_user(api: AirflowApi, name: str, password: str, fab_roles: list[str]) -> list[str]:
    found = api.call("GET", f"/users/{name}")
    if found is None:
        api.call("POST", "/users", {
            "username": name, "email": f"{name}@closedloop.invalid", "first_name": name,
            "last_name": "(closedloop)", "roles": [{"name": r} for r in fab_roles],
            "password": password,
        })  # fmt: skip
        return [f"airflow: created user {name} ({', '.join(fab_roles)})"]
    changes = []
    have = sorted(r["name"] for r in found.get("roles") or [])
    if have != sorted(fab_roles):
        api.call("PATCH", f"/users/{name}", {"roles": [{"name": r} for r in fab_roles]},
                 update_mask="roles")  # fmt: skip
        changes.append(f"airflow: {name}: roles {', '.join(have)} -> {', '.join(fab_roles)}")
    if api.login(name, password) is None:
        api.call("PATCH", f"/users/{name}", {"password": password}, update_mask="password")
        changes.append(f"airflow: {name}: password updated")
    return changes


def _mlflow_connection(
    api: AirflowApi, conn_id: str, uri: str, name: str, password: str
) -> list[str]:
    """The Airflow connection ``conn_id`` holds ``name``'s MLflow login at ``uri``.
    Airflow's API never shows a connection's password, so a salted digest of what was
    written is kept in its extra: a changed login or password is written again."""
    salt = f"closedloop:{conn_id}".encode()
    digest = hashlib.pbkdf2_hmac("sha256", f"{uri}\n{name}\n{password}".encode(), salt, 200_000)
    extra = json.dumps({"closedloop_digest": digest.hex()})
    body = {"connection_id": conn_id, "conn_type": "closedloop_mlflow", "host": uri,
            "login": name, "password": password, "extra": extra}  # fmt: skip
    found = api.call("GET", f"/api/v2/connections/{conn_id}")
    if found is None:
        api.call("POST", "/api/v2/connections", body)
        return [f"airflow: created connection {conn_id} (MLflow login of {name})"]
    if json.loads(found.get("extra") or "{}").get("closedloop_digest") == digest.hex():
        return []
    api.call("PATCH", f"/api/v2/connections/{conn_id}", body)
    return [f"airflow: connection {conn_id}: MLflow login of {name} written again"]


def _manage(engine: sa.Engine, system: str, name: str) -> None:
    with engine.begin() as conn:
        if not conn.scalar(sa.select(sa.func.count()).select_from(MANAGED).where(
                MANAGED.c.system == system, MANAGED.c.name == name)):  # fmt: skip
            conn.execute(MANAGED.insert().values(system=system, name=name))


def _managed(engine: sa.Engine, system: str) -> list[str]:
    with engine.begin() as conn:
        return list(conn.scalars(sa.select(MANAGED.c.name).where(MANAGED.c.system == system)))


def _unmanage(engine: sa.Engine, system: str, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(MANAGED.delete().where(MANAGED.c.system == system, MANAGED.c.name == name))

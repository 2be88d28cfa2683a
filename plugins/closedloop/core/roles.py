"""The roles declaration: the paper's roles R1-R7 (Kreuzberger et al. 2023) as rights in
Airflow, MLflow and ``closedloop serve``, and the users who hold them.

A declaration (``roles.yaml``; the shipped one is ``closedloop/roles.yaml``, another is
named by ``CLOSEDLOOP_ROLES_FILE``) has ``roles``, each with its paper role (``R1``..
``R7``, or ``service`` for an account a DAG runs as) and its rights, and ``users``, each
with one role and where its password comes from (an environment variable or a file:
never a default). :func:`load_roles` checks it all before anything is applied and names
each problem by its path, as a use-case declaration does. :func:`matrix` is the role x
action table ``closedloop users show`` prints and docs/roles.md explains.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from closedloop.core.usecase import DeclarationError, _pydantic_problems

#: where the shipped declaration is
SHIPPED = Path(__file__).resolve().parent.parent / "roles.yaml"
#: the paper's roles (Kreuzberger, Kühl & Hirschl 2023, section IV-C)
PAPER_ROLES = {
    "R1": "business stakeholder",
    "R2": "solution architect",
    "R3": "data scientist",
    "R4": "data engineer",
    "R5": "software engineer",
    "R6": "DevOps engineer",
    "R7": "ML engineer / MLOps engineer",
}
#: a use case's DAGs, by stage (``UseCase.dag_ids``)
STAGES = ("features", "training", "batch_inference", "monitoring")
#: MLflow's permission levels, weakest first
MLFLOW_LEVELS = ("NO_PERMISSIONS", "READ", "EDIT", "MANAGE")

Stage = Literal["features", "training", "batch_inference", "monitoring"]
Level = Literal["NO_PERMISSIONS", "READ", "EDIT", "MANAGE"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AirflowRights(_Strict):
    """What the role may do with each use case's DAGs in Airflow."""

    see: list[Stage] = Field(default_factory=list, description="DAGs it may see")
    trigger: list[Stage] = Field(default_factory=list, description="DAGs it may trigger")
    clear: list[Stage] = Field(default_factory=list, description="DAGs whose tasks it may clear")
    approve: bool = Field(default=False, description="may answer a promotion's approval")
    admin: bool = Field(default=False, description="Airflow's admin: connections, pools, users")

    @model_validator(mode="after")
    def _seen(self) -> AirflowRights:
        hidden = sorted({*self.trigger, *self.clear} - set(self.see))
        if hidden:
            raise ValueError(f"trigger or clear on DAGs it may not see: {', '.join(hidden)}")
        if self.approve and "training" not in self.see:
            raise ValueError("approve needs the training DAG in see")
        # Airflow's FAB auth manager grants clearing per role, on every DAG the role may
        # edit (trigger, approve): a narrower clear would not be what Airflow enforces.
        edited = {*self.trigger, *(["training"] if self.approve else [])}
        wider = sorted(edited - set(self.clear)) if self.clear else []
        if wider:
            raise ValueError(
                "a role that clears tasks clears them on every DAG it may trigger or approve "
                f"in; add {', '.join(wider)} to clear, or clear nothing"
            )
        return self

    @property
    def edits(self) -> list[Stage]:
        """The stages whose DAG the role may edit in Airflow: trigger, clear, approve."""
        edited = {*self.trigger, *self.clear, *(["training"] if self.approve else [])}
        return [s for s in STAGES if s in edited]

    @property
    def any(self) -> bool:
        """Whether the role logs in to Airflow at all."""
        return bool(self.see) or self.admin


class MlflowRights(_Strict):
    """The role's permission on each use case's experiments and on its registered model.
    EDIT on the model may move its aliases: only roles that promote get it."""

    experiments: Level = "NO_PERMISSIONS"
    registered_model: Level = "NO_PERMISSIONS"


class ServingRights(_Strict):
    """Which of ``closedloop serve``'s endpoints the role's API key opens."""

    predict: bool = False
    metrics: bool = False
    explain: bool = False


class Role(_Strict):
    paper: Literal["R1", "R2", "R3", "R4", "R5", "R6", "R7", "service"]
    description: str
    airflow: AirflowRights = Field(default_factory=AirflowRights)
    mlflow: MlflowRights = Field(default_factory=MlflowRights)
    serving: ServingRights = Field(default_factory=ServingRights)


class User(_Strict):
    role: str
    #: the environment variable holding the password
    password_env: str | None = None
    #: a file holding the password (its first line), e.g. a mounted secret
    password_file: Path | None = None
    #: the environment variable holding the user's API key for ``closedloop serve``
    #: (``serve --roles``: the key opens the endpoints of the role's ``serving``)
    serving_key_env: str | None = None
    #: an Airflow connection (``closedloop_mlflow``) that ``users sync`` keeps holding
    #: this user's MLflow login: the account the DAGs' tasks log as when the stack names
    #: it in ``CLOSEDLOOP_MLFLOW_CONN_ID``
    airflow_connection: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _one_source(self) -> User:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("give exactly one of password_env and password_file")
        return self

    def password(self) -> str:
        """The password, from its environment variable or file; never a default."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env, "")
            where = f"environment variable {self.password_env}"
        else:
            assert self.password_file is not None
            try:
                value = self.password_file.read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ValueError(f"cannot read {self.password_file}: {exc}") from exc
            where = str(self.password_file)
        if len(value) < 12:
            raise ValueError(f"the password in {where} is missing or shorter than 12 characters")
        return value


class Roles(_Strict):
    roles: dict[str, Role]
    users: dict[str, User] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> Roles:
        missing = sorted(set(PAPER_ROLES) - {r.paper for r in self.roles.values()})
        if missing:
            raise ValueError(f"no role stands for {', '.join(missing)}")
        return self

    def role_of(self, user: str) -> Role:
        return self.roles[self.users[user].role]


def load_roles(path: Path | None = None) -> Roles:
    """The declaration at ``path`` (else ``CLOSEDLOOP_ROLES_FILE``, else the shipped one),
    checked; a :class:`~closedloop.core.usecase.DeclarationError` names every problem."""
    path = path or Path(os.environ.get("CLOSEDLOOP_ROLES_FILE") or SHIPPED)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DeclarationError(str(path), [("(file)", f"cannot read it: {exc}")]) from exc
    if not isinstance(raw, dict):
        raise DeclarationError(str(path), [("(file)", "a roles declaration is a YAML mapping")])
    try:
        roles = Roles.model_validate(raw)
    except ValidationError as exc:
        raise DeclarationError(str(path), _pydantic_problems(exc)) from None
    problems = [
        (f"users.{name}.role", f"unknown role {user.role!r}; one of {', '.join(roles.roles)}")
        for name, user in roles.users.items()
        if user.role not in roles.roles
    ]
    if problems:
        raise DeclarationError(str(path), problems)
    return roles


def matrix(roles: Roles) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The role x action table: the roles (columns, with their paper role) and, per
    action, each role's answer (``yes``, ``-``, or the MLflow level)."""
    names = list(roles.roles)
    header = [f"{n} ({roles.roles[n].paper})" for n in names]
    rows: list[tuple[str, list[str]]] = []

    def row(action: str, answer: object) -> None:
        rows.append((action, [str(answer(roles.roles[n])) for n in names]))  # type: ignore[operator]

    def yes(flag: bool) -> str:
        return "yes" if flag else "-"

    for stage in STAGES:
        row(f"Airflow: see the {stage} DAG", lambda r, s=stage: yes(s in r.airflow.see))
        row(f"Airflow: trigger the {stage} DAG", lambda r, s=stage: yes(s in r.airflow.trigger))
        row(f"Airflow: clear the {stage} DAG's tasks", lambda r, s=stage: yes(s in r.airflow.clear))
    row("Airflow: answer a promotion's approval", lambda r: yes(r.airflow.approve))
    row("Airflow: administer (connections, users)", lambda r: yes(r.airflow.admin))
    row("MLflow: the use case's experiments", lambda r: r.mlflow.experiments)
    row("MLflow: the registered model", lambda r: r.mlflow.registered_model)
    row("MLflow: move champion / challenger", lambda r: yes(_moves_aliases(r)))
    row("serve: POST /predict", lambda r: yes(r.serving.predict))
    row("serve: GET /metrics", lambda r: yes(r.serving.metrics))
    row("serve: GET /explain/{id}", lambda r: yes(r.serving.explain))
    return header, rows


#: the endpoints of ``closedloop serve`` a key may open, by ServingRights field
SERVING_SCOPES = ("predict", "metrics", "explain")
#: the shortest API key accepted
MIN_KEY_CHARS = 16


def serving_keys(roles: Roles) -> dict[str, tuple[str, frozenset[str]]]:
    """Each declared user's serving key (from its ``serving_key_env``) -> (the user, the
    endpoints its role opens); a user without one has none. A key that is missing or
    shorter than :data:`MIN_KEY_CHARS` is an error naming its variable."""
    keys: dict[str, tuple[str, frozenset[str]]] = {}
    for name, user in roles.users.items():
        if user.serving_key_env is None:
            continue
        key = os.environ.get(user.serving_key_env, "")
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(
                f"users.{name}.serving_key_env: {user.serving_key_env} is missing or shorter "
                f"than {MIN_KEY_CHARS} characters"
            )
        if key in keys:
            raise ValueError(f"users.{name}: the same API key as {keys[key][0]}")
        rights = roles.role_of(name).serving
        keys[key] = (name, frozenset(s for s in SERVING_SCOPES if getattr(rights, s)))
    return keys


def markdown_matrix(roles: Roles) -> str:
    """:func:`matrix` as a Markdown table (docs/roles.md holds the shipped one's)."""
    header, rows = matrix(roles)
    lines = [
        "| action | " + " | ".join(h.replace("_", " ") for h in header) + " |",
        "| --- |" + " :---: |" * len(header),
    ]
    lines += [f"| {action} | " + " | ".join(answers) + " |" for action, answers in rows]
    return "\n".join(lines)


def _moves_aliases(role: Role) -> bool:
    """MLflow lets EDIT or more on a registered model set its aliases."""
    return MLFLOW_LEVELS.index(role.mlflow.registered_model) >= MLFLOW_LEVELS.index("EDIT")

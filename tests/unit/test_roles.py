"""The roles declaration: the shipped one maps R1-R7 to the rights the issue asks for,
a bad declaration names each problem by its path before anything is applied, and a
password comes from the environment or a file, never a default."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from closedloop.core.roles import SHIPPED, STAGES, load_roles, matrix
from closedloop.core.usecase import DeclarationError


def _write(tmp_path, change):
    declared = yaml.safe_load(SHIPPED.read_text())
    change(declared)
    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(declared, sort_keys=False))
    return path


def test_the_shipped_roles_give_the_defaults_the_paper_roles_need():
    roles = load_roles(SHIPPED)
    assert {r.paper for r in roles.roles.values()} >= {f"R{i}" for i in range(1, 8)}
    header, rows = matrix(roles)
    table = {action: dict(zip([h.split(" (")[0] for h in header], answers, strict=True))
             for action, answers in rows}  # fmt: skip
    movers = {r for r, a in table["MLflow: move champion / challenger"].items() if a == "yes"}
    assert movers == {"ml_engineer", "training_pipeline"}  # only they may promote
    scientist = roles.roles["data_scientist"]
    assert scientist.mlflow.experiments == "EDIT" and scientist.mlflow.registered_model == "READ"
    stakeholder = roles.roles["business_stakeholder"]
    assert stakeholder.airflow.trigger == [] and stakeholder.airflow.see  # reads, runs nothing
    devops = roles.roles["devops_engineer"]
    assert "training" not in devops.airflow.trigger + devops.airflow.clear
    assert not devops.airflow.approve
    approvers = {n for n, r in roles.roles.items() if r.airflow.approve}
    assert approvers == {"ml_engineer"}


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (lambda d: d["roles"]["data_scientist"]["mlflow"].update(experiments="WRITE"),
         "roles.data_scientist.mlflow.experiments", "Input should be"),
        (lambda d: d["roles"]["software_engineer"]["airflow"].update(trigger=["training"]),
         "roles.software_engineer.airflow", "DAGs it may not see: training"),
        (lambda d: d["roles"]["data_engineer"]["airflow"].update(clear=["features"]),
         "roles.data_engineer.airflow", "add batch_inference to clear"),
        (lambda d: d["roles"]["ml_engineer"].update(colour="blue"),
         "roles.ml_engineer.colour", "unknown field"),
        (lambda d: d["roles"].pop("solution_architect"), "(file)", "no role stands for R2"),
        (lambda d: d.update(users={"bob": {"role": "wizard", "password_env": "BOB_PW"}}),
         "users.bob.role", "unknown role 'wizard'"),
        (lambda d: d.update(users={"bob": {"role": "ml_engineer"}}),
         "users.bob", "exactly one of password_env and password_file"),
    ],
)  # fmt: skip
def test_a_bad_declaration_names_the_field(tmp_path, change, path, message):
    with pytest.raises(DeclarationError) as caught:
        load_roles(_write(tmp_path, change))
    problems = dict(caught.value.problems)
    assert path in problems and message in problems[path], caught.value.problems


def test_a_password_comes_from_its_variable_or_file_and_is_never_short(tmp_path, monkeypatch):
    secret = tmp_path / "carol.secret"
    secret.write_text("carol-password-from-a-file\n")
    path = _write(tmp_path, lambda d: d.update(users={
        "bob": {"role": "data_scientist", "password_env": "BOB_PASSWORD"},
        "carol": {"role": "ml_engineer", "password_file": str(secret)},
    }))  # fmt: skip
    roles = load_roles(path)
    monkeypatch.delenv("BOB_PASSWORD", raising=False)
    with pytest.raises(ValueError, match="BOB_PASSWORD is missing or shorter"):
        roles.users["bob"].password()
    monkeypatch.setenv("BOB_PASSWORD", "short")
    with pytest.raises(ValueError, match="shorter than 12"):
        roles.users["bob"].password()
    monkeypatch.setenv("BOB_PASSWORD", "a-long-enough-password")
    assert roles.users["bob"].password() == "a-long-enough-password"
    assert roles.users["carol"].password() == "carol-password-from-a-file"
    assert roles.role_of("carol").airflow.approve


def test_users_show_prints_the_matrix_and_the_users(tmp_path):
    from closedloop.cli import main

    path = _write(tmp_path, lambda d: d.update(
        users={"bob": {"role": "data_scientist", "password_env": "BOB_PASSWORD"}}))  # fmt: skip
    result = CliRunner().invoke(main, ["users", "show", "--roles", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "data_scientist (R3)" in lines[0] and "ml_engineer (R7)" in lines[0]
    move = next(line for line in lines if line.startswith("MLflow: move champion"))
    assert move.split()[-8:] == ["-", "-", "-", "-", "-", "-", "yes", "yes"]
    assert "user bob: data_scientist (password from $BOB_PASSWORD)" in result.output
    bad = _write(tmp_path, lambda d: d["roles"]["ml_engineer"].update(colour="blue"))
    result = CliRunner().invoke(main, ["users", "show", "--roles", str(bad)])
    assert result.exit_code == 1 and "roles.ml_engineer.colour: unknown field" in result.output


def test_docs_roles_holds_the_shipped_matrix():
    from closedloop.core.roles import markdown_matrix
    from closedloop.core.settings import PROJECT_ROOT

    assert markdown_matrix(load_roles(SHIPPED)) in (PROJECT_ROOT / "docs" / "roles.md").read_text()


def test_each_role_becomes_the_fab_permissions_of_its_dags():
    from closedloop.platform.access import airflow_permissions, base_permissions

    roles = load_roles(SHIPPED)
    stage_dags = {s: [f"{uc}_{s}" for uc in ("a", "b")] for s in STAGES}
    viewer = {("can_read", "DAGs"), ("can_read", "DAG Runs"), ("can_read", "Website")}
    base = base_permissions(viewer)
    assert base == {("can_read", "DAG Runs"), ("can_read", "Website")}  # not every DAG

    def of(role):
        return airflow_permissions(roles.roles[role], stage_dags, base)

    every_dag = {f"DAG:{d}" for dags in stage_dags.values() for d in dags}
    stakeholder = of("business_stakeholder")
    assert {r for a, r in stakeholder if a == "can_read" and r.startswith("DAG:")} == every_dag
    assert not {p for p in stakeholder if p[0] in ("can_edit", "can_create")}
    engineer = of("data_engineer")
    runs = {r for a, r in engineer if a == "can_create"}
    assert runs == {f"DAG Run:{uc}_{s}" for uc in "ab" for s in ("features", "batch_inference")}
    assert ("can_edit", "DAG:a_training") not in engineer  # cannot clear training's tasks
    assert ("can_edit", "Task Instances") in engineer
    ml = of("ml_engineer")
    assert ("can_edit", "HITL Detail") in ml and ("can_edit", "DAG:b_training") in ml
    assert ("can_edit", "HITL Detail") not in of("devops_engineer")
    assert of("training_pipeline") == base and not roles.roles["training_pipeline"].airflow.any

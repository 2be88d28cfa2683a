"""
### closedloop — the Airflow DAGs of every declared use case

For each use-case declaration (`<name>.yaml`) in the folder `CLOSEDLOOP_USECASES_DIR`
(default: the use cases that ship with closedloop), four DAGs: `<name>_features`,
`<name>_training`, `<name>_batch_inference` and `<name>_monitoring`. Drop a new
declaration into the folder and its DAGs appear; `closedloop check NAME` shows what
they will be. A declaration that does not validate is reported as this file's import
error, naming the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from closedloop.core.settings import load_settings, usecase_files
from closedloop.core.usecase import UseCase
from closedloop.factory import usecase_dags

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import DAG


def _declared_dags() -> Iterator[DAG]:
    settings = load_settings()
    connections = {
        name: value
        for name, value in (
            ("mlflow_conn_id", settings.mlflow_conn_id),
            ("feast_conn_id", settings.feast_conn_id),
        )
        if value
    }
    for name, path in usecase_files(settings.usecases_dir).items():
        usecase = UseCase.from_yaml(path)
        if usecase.name != name:
            raise ValueError(
                f"{path} declares the use case {usecase.name!r}: name the file after it"
            )
        yield from usecase_dags(usecase, path, connections)


globals().update({dag.dag_id: dag for dag in _declared_dags()})

"""What the evidence tests cut out of a loop's facts (``closedloop.core.evidence``) to
see the matching principles turn red; shared by tests/unit and tests/e2e."""

from __future__ import annotations

import dataclasses
from typing import Any


def without_monitoring(facts: Any, monitoring_dag_id: str) -> Any:
    """``facts`` as if the monitoring DAG had never run: no runs of it, no verdicts, no
    monitoring MLflow runs, no Evidently reports, no drift report files."""
    return dataclasses.replace(
        facts,
        dag_runs=[r for r in facts.dag_runs if r.dag_id != monitoring_dag_id],
        verdicts=[],
        monitoring_runs=[],
        evidently={},
        files={**facts.files, "drift_reports": []},
    )

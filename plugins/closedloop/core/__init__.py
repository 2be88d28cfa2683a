"""closedloop's decisions, as typed functions over settings, frames and files.

What each layer may import (``tests/unit/test_core_boundaries.py`` keeps it so):

* ``core`` imports no Airflow, and nothing of closedloop outside ``core``;
* ``hooks``, ``operators``, the DAG ``factory``, ``assets`` and ``provider`` adapt
  ``core`` to Airflow; ``ui`` is the closedloop view in Airflow's UI (a plugin);
  ``serving`` adapts ``core`` to HTTP; ``usecases`` holds declarations and data;
* ``platform`` runs the services (Airflow, MLflow, the production stack) and may import
  the library; ``demo`` may import both; nothing imports ``demo``, and the library never
  imports ``platform``.
"""

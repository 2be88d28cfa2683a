"""closedloop: Airflow, Feast, MLflow, Evidently and Great Expectations as one closed MLOps
loop. The layers and what each may import: :mod:`closedloop.core`."""

"""Running closedloop's services: Airflow, MLflow and the stack, on a laptop or in the
production profile, and the commands that drive them for a user's own data. The library
(``core``, ``operators``, ``hooks``, ``serving``, ``usecases``) never imports it."""

# The closedloop image: every service of compose/docker-compose.yml runs it with its own
# `closedloop stack run <component>` (or `closedloop serve`). Build from the checkout's root:
#   docker build -t closedloop:latest .
FROM python:3.11-slim-bookworm

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1

WORKDIR /opt/closedloop

# Java for compute: spark (pyspark's driver in the Airflow worker, and the compose stack's
# Spark master and workers, which run this image). Not pinned: bookworm's security
# updates replace the version, and a pinned one would stop building.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

# The exact versions that were tested together, with bytecode (imports are 2-3x slower
# without it). The lock changes less often than the code: its own layer. It includes the
# `s3` extra (boto3), with which the MLflow server writes artifacts to an object store
# (compose's `s3` profile), and the `spark` extra (pyspark, for compute: spark).
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && pip install uv==0.13.8 \
    && uv pip install --python /opt/venv/bin/python --compile-bytecode -r requirements.lock

# The package from the checkout (editable, as `make env` does: the DAGs and the Feast
# repository are found beside it).
COPY pyproject.toml README.md ./
COPY plugins ./plugins
COPY dags ./dags
COPY feature_repo ./feature_repo
COPY mlflow ./mlflow
# (plugins/closedloop.egg-info, a by-product on sys.path, would duplicate the entry points)
RUN uv pip install --python /opt/venv/bin/python --compile-bytecode --no-deps -e . \
    && rm -rf plugins/closedloop.egg-info \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/closedloop closedloop
USER 10001
ENV CLOSEDLOOP_HOME=/var/lib/closedloop \
    CLOSEDLOOP_PROFILE=production

ENTRYPOINT ["closedloop"]
CMD ["--help"]

#!/bin/sh
# Starts closedloop's MLflow tracking server: MLflow's basic-auth app, artifacts served
# through the server (clients never need the object store's keys), one worker.
#
#   mlflow/server.sh MLFLOW_PROGRAM [mlflow server options ...]
#
# `closedloop stack run mlflow` calls it with the options its settings give (backend
# store, artifacts destination, host, port, allowed hosts) after writing the auth
# configuration from basic_auth.ini; compose's `mlflow` service runs exactly that.
# The policy below is not an option: the script refuses to start a server without auth.
set -eu

if [ "$#" -lt 1 ]; then
    echo "usage: $0 MLFLOW_PROGRAM [mlflow server options ...]" >&2
    exit 2
fi
program=$1
shift

config=${MLFLOW_AUTH_CONFIG_PATH:-}
if [ -z "$config" ] || [ ! -r "$config" ]; then
    echo "refusing to start: MLFLOW_AUTH_CONFIG_PATH does not name a readable basic-auth configuration (${config:-unset})" >&2
    exit 2
fi
# it names the users' database and its credentials: readable by its owner only
case "$(stat -c %a "$config")" in
    600|400) ;;
    *) echo "refusing to start: $config is readable by others (mode $(stat -c %a "$config")); chmod 600 it" >&2
       exit 2 ;;
esac
for name in MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "refusing to start: $name is not set" >&2
        exit 2
    fi
done

exec "$program" server --app-name basic-auth --serve-artifacts --workers 1 "$@"

"""``python -m closedloop.platform.airflow_admin NAME``: Airflow's admin user in the FAB
auth manager's database, with the password in ``CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD``.

``closedloop stack run api-server`` runs it (in the server's environment, after ``init``
migrated the database) before it starts the server: the first start creates the user, a
changed password replaces the stored one, and a user who lost the ``Admin`` role gets it
back. Everyone else is made by ``closedloop users sync`` through the server's REST API;
this one cannot be, since nobody could log in to make it. FAB's ``airflow users create``
would take the password on the command line, where ``ps`` shows it.
"""

from __future__ import annotations

import os
import sys


def ensure_admin(name: str, password: str) -> str:
    """Make ``name`` an Airflow admin with ``password``; what was done, for the log."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        admin = sm.find_role("Admin")
        user = sm.find_user(username=name)
        if user is None:
            created = sm.add_user(name, "closedloop", "admin", f"{name}@closedloop.invalid",
                                  admin, password)  # fmt: skip
            if not created:
                raise SystemExit(f"could not create Airflow's {name} user")
            return f"created Airflow user {name}"
        done = []
        if not sm.check_password(name, password):
            sm.reset_password(user.id, password)
            done.append("password replaced")
        if admin not in user.roles:
            user = sm.find_user(username=name)
            user.roles = [*user.roles, admin]
            sm.update_user(user)
            done.append("Admin role given back")
        return f"Airflow user {name}: " + (", ".join(done) or "as declared")


def main() -> None:
    password = os.environ.get("CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD", "")
    if not password:
        raise SystemExit("CLOSEDLOOP_AIRFLOW_ADMIN_PASSWORD is not set")
    print(ensure_admin(sys.argv[1], password), flush=True)


if __name__ == "__main__":
    main()

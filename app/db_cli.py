"""``echo-app db upgrade`` / ``echo-app db current``: the store's schema from the command line.

Both read the same environment as the app (``ECHO_DATABASE_URL``, else the SQLite file in
``ECHO_DATA_DIR``). Run ``db upgrade`` once before starting the app processes of a new release;
``db current`` prints the database's revision and exits 0 when it is the one this release needs,
1 when ``db upgrade`` is still to run, 2 on an error (the URL is always printed without its password).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .schema import (
    SCHEMA_REVISION,
    UPGRADE_COMMAND,
    SchemaError,
    database_url,
    redact_url,
    schema_state,
    upgrade,
)
from .settings import AppSettings, SettingsError

__all__ = ["add_db_parser", "run_db_command"]


def add_db_parser(subparsers: Any) -> None:
    """The ``db`` subcommand with its two actions."""
    db = subparsers.add_parser("db", help="database schema: `db upgrade` before starting, `db current` to check",
                               description="Migrate or inspect the database named by ECHO_DATABASE_URL (default: "
                                           "echo.sqlite in ECHO_DATA_DIR).")
    db.add_argument("action", choices=("upgrade", "current"),
                    help="upgrade: migrate to this release's schema (run once, before the app processes start); "
                         "current: print the database's schema revision")


def run_db_command(action: str, *, env: Mapping[str, str] | None = None, out: Any = None, err: Any = None) -> int:
    """Run ``db <action>``; messages go to ``out`` / ``err`` (default stdout / stderr). Returns the exit code."""
    import sys

    out, err = out or sys.stdout, err or sys.stderr
    try:
        settings = AppSettings.from_env(env)
        url = database_url(settings.data_dir, settings.database_url)
    except (SettingsError, SchemaError) as error:
        print(f"echo-app db: error: {error}", file=err)
        return 2
    shown = redact_url(url)
    try:
        if action == "current":
            state = schema_state(url)
            print(f"database: {shown}\nstate: {state.describe()}\nthis release needs: schema revision "
                  f"{SCHEMA_REVISION}",
                  file=out)
            if state.revision != SCHEMA_REVISION:
                print(f"run `{UPGRADE_COMMAND}` before starting the app", file=out)
                return 1
            return 0
        result = upgrade(url)
    except SchemaError as error:
        print(f"echo-app db: error: {error}", file=err)
        return 2
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or type(error).__name__).strip().splitlines()[0]
        print(f"echo-app db: error: cannot use the database {shown}: {reason}", file=err)
        return 2
    if result.before.revision == result.after.revision:
        print(f"database {shown} is already at schema revision {result.after.revision}; nothing to do", file=out)
    else:
        print(f"database {shown} upgraded: was {result.before.describe()}, now at schema revision "
              f"{result.after.revision}", file=out)
    if result.backup is not None:
        print(f"copy of the store before the upgrade: {result.backup}", file=out)
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:  # pragma: no cover - `python -m app.db_cli`
    parser = argparse.ArgumentParser(prog="echo-app")
    add_db_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(run_db_command(_parse(sys.argv[1:]).action))

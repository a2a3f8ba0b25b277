"""A throwaway PostgreSQL cluster for tests and scripts (no pytest needed here).

The server comes from the Debian ``postgresql`` package, whose binaries live under
``/usr/lib/postgresql/<version>/bin`` (not on PATH); ``ECHO_PG_BIN`` names another folder. ``initdb``
refuses to run as root, so as root every server command runs through ``runuser`` as an unprivileged user
(``postgres`` when it exists, else a system user created for the purpose). The cluster lives in a fresh temp
folder, listens on a free loopback port only (password authentication over TCP, a Unix socket inside the
folder), and :meth:`PgCluster.stop` stops it and removes the folder.

Usage::

    with running_cluster() as cluster:
        url = cluster.url            # postgresql+psycopg://echo:...@127.0.0.1:PORT/echo
        other = cluster.create_database("second")

:class:`ClusterUnavailable` (with the reason) is raised where no server can be found or started.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ClusterUnavailable", "PgCluster", "find_pg_bin", "running_cluster", "start_cluster"]

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "echo"
DATABASE = "echo"
#: Unprivileged account created (as root) when the package's ``postgres`` user is missing.
FALLBACK_OS_USER = "echo-pg"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started here; the message says why."""


def find_pg_bin(env: dict[str, str] | None = None) -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl`` (or ``ECHO_PG_BIN``)."""
    env = os.environ if env is None else env
    if env.get("ECHO_PG_BIN"):
        candidates = [Path(env["ECHO_PG_BIN"])]
    else:
        versions = [p for p in PG_ROOT.glob("*") if p.name.isdigit()] if PG_ROOT.is_dir() else []
        candidates = [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    return None


def _os_user() -> str | None:
    """The account the server runs as: ``None`` = this one (not root), else an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
                       check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise ClusterUnavailable(f"running as root and could not create the user {FALLBACK_OS_USER!r}: {err}") from err
    return FALLBACK_OS_USER


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    """A running throwaway cluster; ``url`` is a SQLAlchemy URL of its database ``echo``."""

    bin_dir: Path
    root: Path
    port: int
    password: str
    os_user: str | None
    databases: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url_of(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_of(DATABASE)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.os_user is not None:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        try:
            return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)
        except subprocess.CalledProcessError as err:
            raise ClusterUnavailable(f"{args[0]} failed ({err.returncode}): {(err.stderr or err.stdout).strip()}") from err
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ClusterUnavailable(f"{args[0]} could not run: {err}") from err

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (lower-case letters, digits, ``_``) and return its URL."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url_of(name)

    def stop(self) -> None:
        """Stop the server at once (no checkpoint: it is thrown away) and remove its folder."""
        if self.data_dir.is_dir():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, durable: bool = False, attempts: int = 3) -> PgCluster:
    """Create and start a cluster with a database ``echo``; raises :class:`ClusterUnavailable`.

    ``durable=False`` turns fsync off (a test cluster is thrown away, and no test kills the server itself).
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise ClusterUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) under {PG_ROOT}/<version>/bin "
                                 "or on PATH: install the 'postgresql' package (or set ECHO_PG_BIN)")
    os_user = _os_user()
    root = Path(tempfile.mkdtemp(prefix="echo-pg-"))
    password = secrets.token_hex(12)
    cluster = PgCluster(bin_dir=bin_dir, root=root, port=0, password=password, os_user=os_user)
    try:
        (root / "socket").mkdir()
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if os_user is not None:
            entry = pwd.getpwnam(os_user)
            for path in (root, root / "socket", pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cluster._run("initdb", "-D", str(cluster.data_dir), "-U", SUPERUSER, "--pwfile", str(pwfile),
                     "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        pwfile.unlink()
        options = f"-c listen_addresses=127.0.0.1 -k {root / 'socket'}"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        last = ""
        for _ in range(attempts):  # a free port may be taken between the probe and the start
            cluster.port = _free_port()
            done = cluster._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(cluster.data_dir),
                                "-l", str(root / "server.log"), "-o", f"-p {cluster.port} {options}", check=False)
            if done.returncode == 0:
                break
            log = root / "server.log"
            last = (done.stderr or done.stdout).strip() + (" | " + log.read_text()[-800:] if log.exists() else "")
        else:
            raise ClusterUnavailable(f"pg_ctl start failed {attempts} times: {last}")
        cluster.create_database(DATABASE)
        return cluster
    except BaseException:
        cluster.stop()
        raise


@contextlib.contextmanager
def running_cluster(*, durable: bool = False) -> Iterator[PgCluster]:
    """A started cluster, stopped and removed on exit."""
    cluster = start_cluster(durable=durable)
    try:
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":  # a smoke check: start, print the URL without its password, stop
    with running_cluster() as demo:
        print(demo.url.replace(demo.password, "***"), "on", demo.bin_dir)

"""Serve the ECHO web app in a child process on loopback, for the reliability scripts and their tests.

Why a child process and not a thread: the load figures must not include the clients' own Python work
(one GIL), the crash test has to ``kill -9`` the server without killing itself, and the PHI scan needs
the server's complete log exactly as an operator would find it.

Layout of one run's working folder (``work_dir``)::

    data/           ECHO_DATA_DIR: echo.sqlite (+ -wal, -shm) and images/
    gradio-cache/   GRADIO_TEMP_DIR: Gradio's upload cache
    tmp/            TMPDIR of the server: export zips are staged under tmp/echo-exports
    app.log         the server's stdout and stderr (appended across restarts)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["ROOT", "AppProcess", "auth_value", "credentials", "free_port", "start_app", "upgrade_database"]

ROOT = Path(__file__).resolve().parents[1]
# The child configures logging itself (level from argv) before echo-app's own basicConfig, which is then a no-op.
_RUNNER = (
    "import logging, sys\n"
    "logging.basicConfig(level=getattr(logging, sys.argv[1]), "
    "format='%(asctime)s %(levelname)s %(name)s: %(message)s')\n"
    "from app.main import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def credentials(count: int) -> dict[str, str]:
    """``count`` test logins ``user0``, ``user1`` ... with distinct passwords."""
    if count < 1:
        raise ValueError(f"need at least one user, got {count}")
    return {f"user{i}": f"pw-{i}-load" for i in range(count)}


def auth_value(creds: Mapping[str, str]) -> str:
    """``ECHO_AUTH`` for ``creds``."""
    return ",".join(f"{user}:{password}" for user, password in creds.items())


@dataclass
class AppProcess:
    """A running ``echo-app`` child and where it keeps its files."""

    process: subprocess.Popen[bytes]
    url: str
    work_dir: Path

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def upload_cache(self) -> Path:
        return self.work_dir / "gradio-cache"

    @property
    def tmp_dir(self) -> Path:
        return self.work_dir / "tmp"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "app.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if the server has not exited after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> AppProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_app(
    work_dir: Path,
    *,
    auth: str | None = None,
    model: str = "embedded",
    queue_size: int = 16,
    log_level: str = "INFO",
    extra_env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 180.0,
    database_url: str | None = None,
    replica_id: str | None = None,
) -> AppProcess:
    """Start ``echo-app`` on a free loopback port with its files under ``work_dir``; return once it answers.

    ``database_url``: ``ECHO_DATABASE_URL`` (``None`` = the SQLite file under ``work_dir/data``); several
    processes given one server database are replicas of one site. ``replica_id``: ``ECHO_REPLICA_ID``.

    Raises:
        ValueError: an unknown ``log_level``.
        RuntimeError: the server exited, or did not answer within ``ready_timeout_s`` (the message holds the
            end of its log).
    """
    if log_level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {log_level!r}")
    work_dir = Path(work_dir)
    for sub in ("data", "gradio-cache", "tmp"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "GRADIO_"))}
    env.update({
        "ECHO_DATA_DIR": str(work_dir / "data"),
        "ECHO_MODEL": model,
        "ECHO_QUEUE_SIZE": str(queue_size),
        "GRADIO_TEMP_DIR": str(work_dir / "gradio-cache"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TMPDIR": str(work_dir / "tmp"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    })
    if auth:
        env["ECHO_AUTH"] = auth
    if database_url:
        env["ECHO_DATABASE_URL"] = database_url
    if replica_id:
        env["ECHO_REPLICA_ID"] = replica_id
    env.update(extra_env or {})
    log = (work_dir / "app.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, log_level, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    app = AppProcess(process=process, url=f"http://127.0.0.1:{port}", work_dir=work_dir)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"echo-app exited with status {process.returncode}:\n{_tail(app.log_path)}")
        try:
            httpx.get(f"{app.url}/config", timeout=2.0)  # 200, or 401 with a login: either way it is serving
            return app
        except httpx.TransportError:
            time.sleep(0.2)
    app.kill()
    raise RuntimeError(f"echo-app did not answer on {app.url} within {ready_timeout_s:.0f} s:\n{_tail(app.log_path)}")


def upgrade_database(database_url: str, *, work_dir: Path) -> str:
    """``echo-app db upgrade`` on ``database_url``, as an operator runs it before starting the replicas.

    Returns its output; raises RuntimeError (with the output) when it fails.
    """
    work_dir = Path(work_dir)
    (work_dir / "upgrade-data").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "GRADIO_"))}
    env.update({
        "ECHO_DATABASE_URL": database_url,
        "ECHO_DATA_DIR": str(work_dir / "upgrade-data"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    })
    done = subprocess.run([sys.executable, "-c", _RUNNER, "WARNING", "db", "upgrade"], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise RuntimeError(f"echo-app db upgrade exited with status {done.returncode}:\n{output}")
    return output


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

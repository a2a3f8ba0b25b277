"""Settings of the web app, read once from the environment into a frozen dataclass.

Why one place: the console script, the Spaces entry point and the tests must agree on what each
variable means, and a typo in a number should fail at start-up with a message naming the variable,
not deep inside a request.

=============================  ==========================================================================
``ECHO_MODEL``                 checkpoint(s): ``embedded`` (default), a folder, or a hub id such as
                               ``Midea-AIRC/ECHO_block8``; several comma-separated become a model menu
``ECHO_DATA_DIR``              where the database and de-identified PNGs live (default ``./echo-data``)
``ECHO_AUTH``                  ``user1:pass1,user2:pass2`` or a path to a file of ``user:pass`` lines
``ECHO_DB_SINGLE_CONNECTION``  ``1`` forces one SQLite connection without WAL, ``0`` forbids it; unset =
                               automatic (on for network/FUSE file systems)
``ECHO_DATABASE_URL``          SQLAlchemy URL of the database (default: ``echo.sqlite`` in ECHO_DATA_DIR), e.g.
                               ``postgresql+psycopg://echo:PASSWORD@db.example/echo`` for several app
                               processes; the password is never logged or shown
``ECHO_IMAGE_DIR``             a folder of de-identified PNGs every app process reads and writes (default:
                               ``images/`` in ECHO_DATA_DIR with SQLite, the database itself with a server)
``ECHO_DB_POOL_SIZE``          connections each app process keeps to a server database (default 5)
``ECHO_DB_MAX_OVERFLOW``       extra connections it may open at peaks (default 10)
``ECHO_DEVICE``                ``cpu``, ``cuda``, ``cuda:1`` ...; unset = CUDA when available
``ECHO_MAX_NEW_TOKENS``        default generation budget shown in the UI (default 512)
``ECHO_QUEUE_SIZE``            most drafts waiting for the device; more are refused as busy (default 16)
``ECHO_GENERATION_CONCURRENCY`` generations that run at once (default 1: one model on one device)
``ECHO_MAX_BATCH``             most drafts decoded together in one shared batch (default 8; 1 = each alone)
``ECHO_BATCH_WINDOW_MS``       how long a free device waits for more drafts to share a batch (default 0 ms)
``ECHO_CPU_THREADS``           torch threads of the served app on a CPU (default: every core but one)
``ECHO_QUANTIZE``              ``none`` (default) or ``int8``: dynamic int8 weights on a CPU, offered while
                               its quality gate passes (``scripts/int8_gate.py``, docs/speed.md)
``ECHO_FALLBACK``              samplers that draft a study again, in turn, when its draft fails the report
                               check, e.g. ``teacher,ar``, or ``none`` (as ``echo-report --fallback``; unset:
                               ``teacher,ar`` for one-step drafts of the embedded family, none for other models)
``ECHO_EXPORT_LICENCE``        licence string written into exported records (default ``unknown``)
``ECHO_RACE_AR_MODEL``         the AR arm of the Race tab: ``embedded`` (default, the embedded Stage I AR
                               checkpoint), a folder or a hub id (official ECHO releases have no AR sibling)
``ECHO_MAX_FILE_SIZE``         largest accepted upload, Gradio syntax (default ``200mb``)
``GRADIO_SERVER_NAME``         interface to listen on (Gradio's default 127.0.0.1)
``GRADIO_SERVER_PORT``         port (Gradio's default: first free from 7860)
``SPACE_ID``                   set by Hugging Face Spaces; enables the persistence check
``ECHO_REPLICA_ID``            this process's name in ``GET /healthz`` (default ``<host>:<pid>``; read there)
=============================  ==========================================================================
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EMBEDDED", "AppSettings", "SettingsError"]

#: The model-menu label of the embedded checkpoint family (each sampler gets its own role).
EMBEDDED = "embedded"
#: ``ECHO_QUANTIZE`` values (``echo_model.device.QUANTIZATIONS``; whether int8 is offered is the model's call).
QUANTIZE_CHOICES = ("none", "int8")
#: Where Spaces mounts persistent storage; anything else on a Space is lost at restart.
SPACES_PERSISTENT_ROOT = Path("/data")


class SettingsError(ValueError):
    """An environment variable with a value the app cannot use; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _tristate(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1/0 (or true/false), got {raw!r}")


def _database_url(env: Mapping[str, str]) -> str | None:
    """``ECHO_DATABASE_URL`` checked for form (a message without the password when it is not a URL)."""
    raw = env.get("ECHO_DATABASE_URL", "").strip()
    if not raw:
        return None
    from sqlalchemy.engine import make_url

    try:
        make_url(raw)
    except Exception:  # noqa: BLE001 - ArgumentError or ValueError, whose text may repeat the password
        scheme = raw.split(":", 1)[0] if "://" in raw else "?"
        raise SettingsError(f"ECHO_DATABASE_URL is not a database URL (scheme {scheme!r}); expected e.g. "
                            "postgresql+psycopg://USER:PASSWORD@HOST:5432/echo") from None
    return raw


def _fallback(env: Mapping[str, str]) -> tuple[str, ...] | None:
    """``ECHO_FALLBACK``: unset = None (each model's default), ``none`` = (), else the named samplers."""
    from echo_model.sampling import parse_sampler_names

    raw = env.get("ECHO_FALLBACK", "").strip().lower()
    return parse_sampler_names(raw) if raw else None


def _default_upload_cache() -> Path:
    """Gradio's upload cache (``GRADIO_TEMP_DIR`` or ``<tmp>/gradio``), the only place we delete files from."""
    env = os.environ.get("GRADIO_TEMP_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "gradio"


@dataclass(frozen=True)
class AppSettings:
    """Everything the app needs to know about its deployment.

    Attributes:
        models: model-menu entries; ``"embedded"`` means the embedded family, otherwise a folder or hub id.
            The first is the default.
        data_dir: database (``echo.sqlite``), ``images/`` (de-identified PNGs by content hash).
        auth: raw ``ECHO_AUTH`` value (see :mod:`app.auth`); ``None`` = no login, every user is ``local_user``.
        single_connection: ``True``/``False`` forces the SQLite mode; ``None`` decides from the file system.
        device: torch device for the model; ``None`` = CUDA when available.
        max_new_tokens: default generation budget.
        queue_size: drafts allowed to wait for the device; further ones are refused at once as busy
            (``Services.gate``, see :mod:`app.admission`; Gradio's own queue is unbounded, so that saves
            are never refused for load).
        generation_concurrency: drafts running at once on the device (the gate's slots).
        max_batch: most drafts one slot decodes together (:mod:`app.batching`); the gate admits
            ``generation_concurrency * max_batch`` studies.
        batch_window_ms: how long the oldest waiting draft waits for others to share its batch. 0 (the default):
            a free device starts at once with every draft that is waiting (a lone reader's first block is not
            held back); drafts that arrive while a batch runs still gather for the next one.
        cpu_threads: torch threads of the served app on a CPU (``None`` = every core but one, see
            :func:`app.batching.tune_for_drafting`).
        quantize: ``none`` or ``int8`` (every drafting model's weights, the Race's arms alike).
        fallback: samplers that draft the study again, in turn, when *Generate*'s draft fails the report check
            (``ECHO_FALLBACK``, as ``echo-report --fallback``); each attempt is its own stored draft, and the
            last one is shown. Empty (the default here): the warned draft is shown with *Re-draft with the
            teacher*. ``None`` (``ECHO_FALLBACK`` unset): each request's default,
            :func:`echo_model.drafting.default_fallback` of its model and sampler.
        export_licence: licence string of exported correction records.
        race_ar_model: checkpoint of the Race tab's AR arm (``"embedded"`` = the embedded AR checkpoint); the
            official ECHO checkpoints come without an AR sibling, so the baseline is configured separately.
        max_file_size: largest upload Gradio accepts.
        server_name / server_port: where to listen (``None`` = Gradio's defaults).
        space_id: the Hugging Face Space id when running on Spaces.
        local_user: the name recorded as author when no login is configured.
        upload_cache_dir: Gradio's upload cache; uploads inside it are deleted once de-identified.
        database_url: ``ECHO_DATABASE_URL`` (``None`` = the SQLite file in ``data_dir``); left out of ``repr``
            (it may hold a password: use ``database_url_redacted``).
        image_dir: ``ECHO_IMAGE_DIR``, a shared folder of PNGs (``None``: see :class:`app.store.Store`).
        db_pool_size / db_max_overflow: connection pool of each process to a server database.
    """

    models: tuple[str, ...] = (EMBEDDED,)
    data_dir: Path = Path("echo-data")
    auth: str | None = None
    single_connection: bool | None = None
    device: str | None = None
    max_new_tokens: int = 512
    queue_size: int = 16
    generation_concurrency: int = 1
    max_batch: int = 8
    batch_window_ms: int = 0
    cpu_threads: int | None = None
    quantize: str = "none"
    fallback: tuple[str, ...] | None = ()
    export_licence: str = "unknown"
    race_ar_model: str = EMBEDDED
    max_file_size: str = "200mb"
    server_name: str | None = None
    server_port: int | None = None
    space_id: str | None = None
    local_user: str = "local"
    upload_cache_dir: Path = field(default_factory=_default_upload_cache)
    database_url: str | None = field(default=None, repr=False)
    image_dir: Path | None = None
    db_pool_size: int = 5
    db_max_overflow: int = 10

    def __post_init__(self) -> None:
        if not self.models or any(not m.strip() for m in self.models):
            raise SettingsError(f"ECHO_MODEL must name at least one model, got {self.models!r}")
        if not self.race_ar_model.strip():
            raise SettingsError(f"ECHO_RACE_AR_MODEL must name a model, got {self.race_ar_model!r}")
        if self.max_new_tokens < 1 or self.queue_size < 1 or self.generation_concurrency < 1:
            raise SettingsError("max_new_tokens, queue_size and generation_concurrency must be >= 1")
        if self.quantize not in QUANTIZE_CHOICES:
            raise SettingsError(f"ECHO_QUANTIZE must be one of {list(QUANTIZE_CHOICES)}, got {self.quantize!r}")
        if self.quantize != "none":  # refused at start-up, not at the first draft, while its quality gate fails
            from echo_model.device import check_quantization

            try:
                check_quantization(self.quantize)
            except ValueError as err:
                raise SettingsError(f"ECHO_QUANTIZE={self.quantize}: {err}") from None
        if self.fallback:
            from echo_model.sampling import check_fallback

            try:
                check_fallback("", self.fallback)
            except ValueError as err:
                raise SettingsError(f"ECHO_FALLBACK={','.join(self.fallback)}: {err}") from None
        if self.max_batch < 1 or self.batch_window_ms < 0:
            raise SettingsError(f"ECHO_MAX_BATCH must be >= 1 and ECHO_BATCH_WINDOW_MS >= 0, got "
                                f"{self.max_batch} and {self.batch_window_ms}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppSettings:
        """Read the variables listed in the module docstring (``env`` defaults to ``os.environ``)."""
        env = os.environ if env is None else env
        models = tuple(m.strip() for m in env.get("ECHO_MODEL", EMBEDDED).split(",") if m.strip()) or (EMBEDDED,)
        port = env.get("GRADIO_SERVER_PORT", "").strip()
        return cls(
            models=models,
            data_dir=Path(env.get("ECHO_DATA_DIR", "").strip() or "echo-data").expanduser(),
            auth=env.get("ECHO_AUTH", "").strip() or None,
            single_connection=_tristate(env, "ECHO_DB_SINGLE_CONNECTION"),
            device=env.get("ECHO_DEVICE", "").strip() or None,
            max_new_tokens=_int(env, "ECHO_MAX_NEW_TOKENS", 512),
            queue_size=_int(env, "ECHO_QUEUE_SIZE", 16),
            generation_concurrency=_int(env, "ECHO_GENERATION_CONCURRENCY", 1),
            max_batch=_int(env, "ECHO_MAX_BATCH", 8),
            batch_window_ms=_int(env, "ECHO_BATCH_WINDOW_MS", 0, minimum=0),
            cpu_threads=_int(env, "ECHO_CPU_THREADS", 0) if env.get("ECHO_CPU_THREADS", "").strip() else None,
            quantize=env.get("ECHO_QUANTIZE", "").strip().lower() or "none",
            fallback=_fallback(env),
            export_licence=env.get("ECHO_EXPORT_LICENCE", "").strip() or "unknown",
            race_ar_model=env.get("ECHO_RACE_AR_MODEL", "").strip() or EMBEDDED,
            max_file_size=env.get("ECHO_MAX_FILE_SIZE", "").strip() or "200mb",
            server_name=env.get("GRADIO_SERVER_NAME", "").strip() or None,
            server_port=_int(env, "GRADIO_SERVER_PORT", 0, minimum=0) if port else None,
            space_id=env.get("SPACE_ID", "").strip() or None,
            upload_cache_dir=Path(env["GRADIO_TEMP_DIR"]) if env.get("GRADIO_TEMP_DIR") else _default_upload_cache(),
            database_url=_database_url(env),
            image_dir=Path(env["ECHO_IMAGE_DIR"].strip()).expanduser() if env.get("ECHO_IMAGE_DIR", "").strip() else None,
            db_pool_size=_int(env, "ECHO_DB_POOL_SIZE", 5),
            db_max_overflow=_int(env, "ECHO_DB_MAX_OVERFLOW", 10, minimum=0),
        )

    @property
    def database_url_redacted(self) -> str:
        """The database URL as logs and messages show it (password replaced by ``***``)."""
        from .schema import database_url, redact_url

        return redact_url(database_url(self.data_dir, self.database_url))

    @property
    def default_model(self) -> str:
        return self.models[0]

    def persistence_warning(self) -> str | None:
        """A sentence for the log and the UI banner when saved work will not survive a restart.

        Why only on Spaces: there the container disk is wiped at every restart and only ``/data``
        (persistent storage, a paid option) survives; elsewhere the operator chose the folder.
        """
        if self.space_id is None:
            return None
        data = self.data_dir.expanduser().absolute()
        if data == SPACES_PERSISTENT_ROOT or SPACES_PERSISTENT_ROOT in data.parents:
            return None
        return (
            f"This Space stores reports in {data}, which is NOT persistent: every draft, edit and signature is "
            "lost when the Space restarts. Enable persistent storage and set ECHO_DATA_DIR=/data/echo."
        )

"""Persistent store of studies, drafts, edits and the audit trail (SQLAlchemy 2: SQLite by default, or any
database URL, PostgreSQL through psycopg 3 tested).

Layout under the data directory (the default, one process)::

    echo.sqlite          tables study, image, image_data, study_image, draft, edit, audit, explanation
    images/<sha256>.png  de-identified pixels (IHDR/IDAT/IEND only), named by their pixel hash
    images/<sha256>.16.png  the original values of a deeper-than-8-bit view (16-bit grey, IHDR/IDAT/IEND only)

With a server database (``url``) several app processes share one store: the PNG bytes live in the
``image_data`` table (each process keeps a local copy under ``image-cache/`` to serve them), or in a
shared folder (``image_dir``) every process mounts. The schema is versioned by Alembic (:mod:`app.schema`).

Rules the schema enforces, not just the code:

* foreign keys are ON (``PRAGMA foreign_keys``): deleting a study deletes its image links, drafts and
  edits (``ON DELETE CASCADE``); the audit references studies by plain id so it survives deletion;
* a signed draft is immutable and only addenda may be added to it; edits and the audit are append-only
  (SQLite triggers raise ``ABORT``, PostgreSQL triggers raise; both refuse deleting an edit or a signed
  draft other than by deleting its study), so even a bug in this module cannot rewrite signed text;
* saved versions and addenda are numbered per draft under unique constraints, so two processes cannot
  both save version N; each edit has exactly one audit event (``audit.edit_id``);
* no raw upload, file name or DICOM header is stored: images arrive as de-identified PNG bytes plus an
  allow-listed metadata dict.

Concurrency (SQLite): on a local disk the database runs in WAL mode with a connection pool (readers never
block the writer). On network or FUSE file systems (NFS, SMB, Spaces bucket mounts) SQLite's locks
are unreliable and WAL is unsupported, so the store uses one connection, ``locking_mode=EXCLUSIVE``
and a rollback journal, and serialises sessions with a lock (``ECHO_DB_SINGLE_CONNECTION`` forces
either mode). A server database gets a connection pool of ``pool_size`` + ``max_overflow``
connections per process, and writes to a draft lock its row (``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from echo_model.data.records import EDIT_REASONS

from .schema import (
    SCHEMA_REVISION,
    SchemaError,
    check_schema,
    database_url,
    is_sqlite,
    read_state,
    redact_url,
    schema_state,
    upgrade,
)

__all__ = [
    "AccessError", "AuditInfo", "DraftInfo", "EditInfo", "ExplanationInfo", "HistoryRow", "ImageInfo", "NewDraft", "NewImage",
    "NotFoundError", "SchemaError", "SignedReportError", "StaleVersionError", "Store", "StoreError", "StudyInfo",
    "WorklistEntry", "like_pattern", "needs_single_connection",
]

DB_NAME = "echo.sqlite"
#: View positions a study image may have (``study_image.view``).
IMAGE_VIEWS: tuple[str, ...] = ("pa", "ap", "lateral", "unknown")
#: File-system types on which SQLite locking/WAL cannot be trusted (network and FUSE mounts).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smbfs", "smb3", "9p", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
    "afs", "davfs", "sshfs", "virtiofs", "s3fs", "gcsfuse", "fuse",
})


class StoreError(ValueError):
    """A request the store refuses; the message names the object and the reason."""


class NotFoundError(StoreError):
    """No study/draft with that id."""


class AccessError(StoreError):
    """The object belongs to another user."""


class SignedReportError(StoreError):
    """The draft is signed: its text can no longer change, only addenda can be added."""


class StaleVersionError(StoreError):
    """The caller edited an older version of the draft than the stored one (another tab or window saved since)."""


UTC = timezone.utc
_T = TypeVar("_T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes (SQLite keeps none, so store naive UTC and re-attach the zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Study(Base):
    __tablename__ = "study"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime]
    images: Mapped[list[StudyImage]] = relationship(
        back_populates="study", order_by="StudyImage.position", cascade="all, delete-orphan", passive_deletes=True
    )
    drafts: Mapped[list[DraftRow]] = relationship(
        back_populates="study", order_by="DraftRow.created_at", cascade="all, delete-orphan", passive_deletes=True
    )


class ImageBlob(Base):
    """One de-identified PNG (on disk, or in ``image_data``), shared by every study that holds the same pixels."""

    __tablename__ = "image"

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    width: Mapped[int]
    height: Mapped[int]
    created_at: Mapped[datetime]


class ImageData(Base):
    """The bytes of an ``image`` row when the store keeps images in the database (deleted with it)."""

    __tablename__ = "image_data"

    hash: Mapped[str] = mapped_column(ForeignKey("image.hash", ondelete="CASCADE"), primary_key=True)
    png: Mapped[bytes] = mapped_column(LargeBinary)
    original_png: Mapped[bytes | None] = mapped_column(LargeBinary)


class StudyImage(Base):
    __tablename__ = "study_image"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    image_hash: Mapped[str] = mapped_column(ForeignKey("image.hash", ondelete="RESTRICT"), index=True)
    position: Mapped[int]
    view: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(64))
    image_metadata: Mapped[dict[str, Any]]
    warnings: Mapped[list[Any]]
    cxr_likeness: Mapped[float] = mapped_column(Float)
    study: Mapped[Study] = relationship(back_populates="images")


class DraftRow(Base):
    __tablename__ = "draft"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(32))  # plain id: a re-draft's source draft
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    model: Mapped[str] = mapped_column(Text)
    model_revision: Mapped[str] = mapped_column(Text)
    sampler: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int | None]
    language: Mapped[str] = mapped_column(String(8))
    settings: Mapped[dict[str, Any]]
    report: Mapped[str] = mapped_column(Text)
    findings: Mapped[str] = mapped_column(Text)
    impression: Mapped[str] = mapped_column(Text)
    trace: Mapped[list[Any]]
    timings: Mapped[dict[str, Any]]
    warnings: Mapped[list[Any]]
    signed_at: Mapped[datetime | None]
    signed_by: Mapped[str | None] = mapped_column(String(128))
    study: Mapped[Study] = relationship(back_populates="drafts")
    edits: Mapped[list[EditRow]] = relationship(
        back_populates="draft", order_by="EditRow.id", cascade="all, delete-orphan", passive_deletes=True
    )
    explanations: Mapped[list[ExplanationRow]] = relationship(
        back_populates="draft", cascade="all, delete-orphan", passive_deletes=True
    )


class ExplanationRow(Base):
    """A computed explanation of part of a draft (cached: the same request is answered from here)."""

    __tablename__ = "explanation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("draft.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(Text)  # target + method + settings
    created_at: Mapped[datetime]
    method: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
    maps: Mapped[list[Any]]  # per view: rows of patch scores
    draft: Mapped[DraftRow] = relationship(back_populates="explanations")


class EditRow(Base):
    """One saved version of the radiologist's text: ``edit``, the ``sign``ed version, or an ``addendum``.

    ``version`` numbers the saved versions of a draft (1, 2, ...; the signature is the last), ``addendum``
    its addenda; each is unique per draft.
    """

    __tablename__ = "edit"
    __table_args__ = (
        Index("uq_edit_draft_version", "draft_id", "version", unique=True),
        Index("uq_edit_draft_addendum", "draft_id", "addendum", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("draft.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    findings: Mapped[str] = mapped_column(Text)
    impression: Mapped[str] = mapped_column(Text)
    reasons: Mapped[list[Any]]
    comment: Mapped[str] = mapped_column(Text)
    seconds_since_draft: Mapped[float] = mapped_column(Float)
    version: Mapped[int | None]
    addendum: Mapped[int | None]
    draft: Mapped[DraftRow] = relationship(back_populates="edits")


class AuditRow(Base):
    """Who did what when. Never holds report text, indications, file names or pixels."""

    __tablename__ = "audit"
    __table_args__ = (Index("uq_audit_draft_edit", "draft_id", "edit_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    study_id: Mapped[str | None] = mapped_column(String(32), index=True)
    draft_id: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]]
    edit_id: Mapped[int | None]  # the edit an edit.save / report.sign / addendum.add event records


# ---------------------------------------------------------------------------------------- value objects
@dataclass(frozen=True)
class NewImage:
    """A de-identified view ready to store (built by the service from a ``LoadedImage``)."""

    content_hash: str
    png: bytes
    width: int
    height: int
    view: str = "unknown"
    label: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    cxr_likeness: float = 1.0
    original_png: bytes | None = None  # 16-bit grey PNG of the values before windowing (deep sources only)


@dataclass(frozen=True)
class ImageInfo:
    content_hash: str
    path: Path
    position: int
    view: str
    label: str
    metadata: dict[str, Any]
    warnings: tuple[str, ...]
    cxr_likeness: float
    original_path: Path | None = None  # the 16-bit originals, when kept


@dataclass(frozen=True)
class StudyInfo:
    id: str
    owner: str
    created_at: datetime
    images: tuple[ImageInfo, ...]
    draft_ids: tuple[str, ...]


@dataclass(frozen=True)
class NewDraft:
    """What a finished generation adds: the text, how it was made, and its per-block trace."""

    study_id: str
    author: str
    model: str
    model_revision: str
    sampler: str
    language: str
    report: str
    findings: str
    impression: str
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    parent_id: str | None = None


@dataclass(frozen=True)
class EditInfo:
    id: int
    kind: str
    author: str
    created_at: datetime
    findings: str
    impression: str
    reasons: tuple[str, ...]
    comment: str
    seconds_since_draft: float


@dataclass(frozen=True)
class DraftInfo:
    id: str
    study_id: str
    parent_id: str | None
    author: str
    created_at: datetime
    model: str
    model_revision: str
    sampler: str
    seed: int | None
    language: str
    settings: dict[str, Any]
    report: str
    findings: str
    impression: str
    trace: list[dict[str, Any]]
    timings: dict[str, Any]
    warnings: list[str]
    signed_at: datetime | None
    signed_by: str | None
    edits: tuple[EditInfo, ...]

    @property
    def versions(self) -> tuple[EditInfo, ...]:
        """Saved versions of the report text (edits and the signed one), oldest first."""
        return tuple(e for e in self.edits if e.kind != "addendum")

    @property
    def addenda(self) -> tuple[EditInfo, ...]:
        return tuple(e for e in self.edits if e.kind == "addendum")

    @property
    def current(self) -> tuple[str, str]:
        """(findings, impression) as last saved by the radiologist, else as drafted."""
        versions = self.versions
        return (versions[-1].findings, versions[-1].impression) if versions else (self.findings, self.impression)

    @property
    def status(self) -> str:
        return "signed" if self.signed_at else ("edited" if self.versions else "draft")


@dataclass(frozen=True)
class ExplanationInfo:
    """A stored explanation: per-view patch maps (non-negative, summing to 1 over the study) and how."""

    draft_id: str
    key: str
    method: str
    label: str
    detail: str
    seconds: float
    maps: list[list[list[float]]]
    created_at: datetime


@dataclass(frozen=True)
class HistoryRow:
    study_id: str
    draft_id: str | None
    created_at: datetime
    sampler: str
    model: str
    status: str
    signed_at: datetime | None
    views: int
    #: warnings the draft carries (input gating and the report check)
    warnings: int = 0


@dataclass(frozen=True)
class WorklistEntry:
    """One study of the worklist, shown through its signed draft, else its latest draft (or none yet).

    Attributes:
        study_id / draft_id: the study and the draft its row stands for (``None``: no draft yet).
        state: ``no draft``, ``draft``, ``edited`` (``versions`` saved) or ``signed``.
        findings / impression: the text of the latest version: signed, else last saved edit, else drafted.
        indication: the indication given to the model ("" when none or no draft).
        updated_at: the latest event of that draft (signature, saved edit, draft), else the study's creation.
        first_image: path of the first view's de-identified PNG (``None`` for a study without views).
        drafts: drafts of the study (re-drafts included).
        warnings: how many warnings the shown draft carries (input gating and the report check), 0 without one.
    """

    study_id: str
    draft_id: str | None
    state: str
    versions: int
    created_at: datetime
    updated_at: datetime
    findings: str
    impression: str
    indication: str
    views: int
    drafts: int
    first_image: Path | None
    warnings: int = 0

    @property
    def signed(self) -> bool:
        return self.state == "signed"


@dataclass(frozen=True)
class AuditInfo:
    at: datetime
    actor: str
    action: str
    study_id: str | None
    draft_id: str | None
    detail: dict[str, Any]


# ---------------------------------------------------------------------------------------- file system
def _mount_fstype(path: Path, mounts_file: Path = Path("/proc/mounts")) -> str | None:
    """File-system type of the mount holding ``path`` (longest mount-point prefix), None if unknown."""
    try:
        lines = mounts_file.read_text().splitlines()
    except OSError:
        return None
    target = path.absolute()
    best: tuple[int, str] | None = None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = Path(parts[1].replace("\\040", " "))
        if (target == point or point in target.parents) and (best is None or len(point.parts) > best[0]):
            best = (len(point.parts), parts[2])
    return best[1] if best else None


def needs_single_connection(path: Path, *, mounts_file: Path = Path("/proc/mounts")) -> bool:
    """True when ``path`` lies on a network or FUSE file system, where SQLite locks and WAL misbehave."""
    fstype = (_mount_fstype(path, mounts_file) or "").lower()
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith(("fuse", "nfs"))


def _new_id() -> str:
    return uuid.uuid4().hex


LIKE_ESCAPE = "\\"


def like_pattern(query: str) -> str:
    """A SQL ``LIKE`` pattern matching ``query`` anywhere, its ``%``, ``_`` and ``\\`` taken literally."""
    for char in (LIKE_ESCAPE, "%", "_"):
        query = query.replace(char, LIKE_ESCAPE + char)
    return f"%{query}%"


# ---------------------------------------------------------------------------------------- the store
class Store:
    """All persistence of the app. Methods return frozen value objects, never live ORM rows.

    Args:
        data_dir: created if missing; holds the SQLite file (default database), the images folder (files
            mode) or the local image cache (database mode).
        single_connection: SQLite only. True = one connection, exclusive locking, no WAL; False = WAL + pool;
            None = decide with :func:`needs_single_connection`.
        url: a SQLAlchemy database URL (``ECHO_DATABASE_URL``); None = ``sqlite:///<data_dir>/echo.sqlite``.
        image_dir: a folder every app process reads and writes (``ECHO_IMAGE_DIR``); None = ``data_dir/images``
            with SQLite, the database itself (``image_data``) with a server database.
        pool_size / max_overflow: connections per process to a server database (SQLite keeps 8 + 8).
        migrate: bring an older schema to :data:`~app.schema.SCHEMA_REVISION` on open. None = on SQLite only
            (one process owns the file; a non-empty store is backed up first); a server database must be
            upgraded with ``echo-app db upgrade`` before the app starts, and a mismatch raises
            :class:`~app.schema.SchemaError` naming both revisions.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, single_connection: bool | None = None,
                 url: str | URL | None = None, image_dir: str | os.PathLike[str] | None = None,
                 pool_size: int = 5, max_overflow: int = 10, migrate: bool | None = None):
        self.data_dir = Path(data_dir).expanduser()
        self.url = database_url(self.data_dir, url)
        self.sqlite = is_sqlite(self.url)
        #: ``files``: PNGs in ``images_dir``; ``database``: PNGs in ``image_data``, cached in ``images_dir``.
        self.image_mode = "files" if (self.sqlite or image_dir is not None) else "database"
        self.images_dir = (Path(image_dir).expanduser() if image_dir is not None
                           else self.data_dir / ("images" if self.image_mode == "files" else "image-cache"))
        self.images_dir.mkdir(parents=True, exist_ok=True)
        if self.sqlite and self.url.database in (None, "", ":memory:"):
            raise StoreError(f"{self.url_redacted} is an in-memory database, lost when the app stops: name a file "
                             "(sqlite:////path/echo.sqlite) or leave ECHO_DATABASE_URL unset")
        db_file = Path(self.url.database) if self.sqlite and self.url.database else None
        self.single_connection = bool(self.sqlite and (
            needs_single_connection(db_file.parent if db_file else self.data_dir)
             if single_connection is None else single_connection))
        if (self.sqlite if migrate is None else migrate) and schema_state(self.url).revision != SCHEMA_REVISION:
            upgrade(self.url)  # before this store's own connections: SQLite's exclusive mode would block it
        self.engine = (self._make_engine(self.url, single=self.single_connection) if self.sqlite
                       else create_engine(self.url, pool_size=pool_size, max_overflow=max_overflow,
                                          pool_pre_ping=True, pool_recycle=1800))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # One shared connection cannot run two transactions at once; a pool of WAL connections can.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.single_connection else contextlib.nullcontext()
        )
        try:
            with self._lock, self.engine.connect() as conn:
                check_schema(conn, self.url)
        except BaseException:
            self.engine.dispose()
            raise
        if self.image_mode == "database":
            self._prune_image_cache()

    def _prune_image_cache(self) -> int:
        """Delete cached PNGs whose image is no longer in the database (a study deleted by another process)."""
        files = list(self.images_dir.glob("*.png"))  # <hash>.png and <hash>.16.png
        if not files:
            return 0
        with self._transaction() as s:
            hashes = list({p.name.split(".")[0] for p in files})
            kept = set(s.scalars(select(ImageBlob.hash).where(ImageBlob.hash.in_(hashes))))
        stale = [p for p in files if p.name.split(".")[0] not in kept]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    @property
    def url_redacted(self) -> str:
        """The database URL with its password hidden (what logs and messages show)."""
        return redact_url(self.url)

    def schema_revision(self) -> str | None:
        """The database's schema revision now (health checks: it reaches the database)."""
        with self._lock, self.engine.connect() as conn:
            return read_state(conn).revision

    @property
    def expected_revision(self) -> str:
        return SCHEMA_REVISION

    @property
    def journal_mode(self) -> str:
        if not self.sqlite:
            return "server"
        with self._lock, self.engine.connect() as conn:
            return str(conn.execute(text("PRAGMA journal_mode")).scalar())

    @staticmethod
    def _make_engine(url: URL, *, single: bool) -> Engine:
        args = {"check_same_thread": False, "timeout": 30}
        engine = (
            create_engine(url, poolclass=StaticPool, connect_args=args)
            if single
            else create_engine(url, connect_args=args, pool_size=8, max_overflow=8)
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")  # before WAL: switching journal mode can itself be busy
            cur.execute("PRAGMA foreign_keys=ON")
            if single:
                cur.execute("PRAGMA locking_mode=EXCLUSIVE")
                cur.execute("PRAGMA journal_mode=DELETE")
            else:
                cur.execute("PRAGMA journal_mode=WAL")
                # FULL, not WAL's usual NORMAL: NORMAL may lose the last commits on power loss, and a save the
                # radiologist saw acknowledged must survive that too. One fsync per save costs milliseconds.
                cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._lock, self._sessions.begin() as session:
            yield session

    # ------------------------------------------------------------------ images and studies
    def image_path(self, content_hash: str) -> Path:
        """The local file of a view's PNG (database mode: fetched into the cache first if missing)."""
        path = self._image_file(content_hash)
        if self.image_mode == "database" and not path.exists():
            with self._transaction() as s:
                self._cache_from_database(s, content_hash)
        return path

    def _image_file(self, content_hash: str) -> Path:
        if len(content_hash) != 64 or any(c not in "0123456789abcdef" for c in content_hash):
            raise StoreError(f"not a content hash: {content_hash!r}")
        return self.images_dir / f"{content_hash}.png"

    def original_path(self, content_hash: str) -> Path:
        """Where the 16-bit originals of ``content_hash`` live (whether or not they were kept)."""
        return self._image_file(content_hash).with_suffix(".16.png")

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        if path.exists():
            return
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _write_png(self, image: NewImage) -> None:
        self._write_file(self._image_file(image.content_hash), image.png)
        if image.original_png is not None:
            self._write_file(self.original_path(image.content_hash), image.original_png)

    def _cache_from_database(self, s: Session, content_hash: str) -> None:
        """Copy a view's bytes from ``image_data`` into this process's cache (no-op when already there)."""
        row = s.get(ImageData, content_hash)
        if row is None:
            return
        self._write_file(self._image_file(content_hash), row.png)
        if row.original_png is not None:
            self._write_file(self.original_path(content_hash), row.original_png)

    def _local_image(self, s: Session, content_hash: str) -> Path:
        path = self._image_file(content_hash)
        if self.image_mode == "database" and not path.exists():
            self._cache_from_database(s, content_hash)
        return path

    def create_study(self, owner: str, images: Sequence[NewImage]) -> StudyInfo:
        """A new study holding ``images`` (in order), owned by ``owner``."""
        if not images:
            raise StoreError("a study needs at least one image")
        study_id = _new_id()
        with self._transaction() as s:
            s.add(Study(id=study_id, owner=owner, created_at=_utcnow()))
            self._attach(s, study_id, images, start=0)
            self._audit(s, owner, "study.create", study_id=study_id, detail={"views": len(images)})
        return self.get_study(study_id, owner)

    def add_images(self, study_id: str, actor: str, images: Sequence[NewImage]) -> StudyInfo:
        """Append views to a study that has no draft yet (a draft must describe a fixed set of views)."""
        with self._transaction() as s:
            study = self._owned_study(s, study_id, actor)
            if study.drafts:
                raise StoreError(f"study {study_id!r} already has drafts; start a new study to add views")
            self._attach(s, study_id, images, start=len(study.images))
            self._audit(s, actor, "study.add_views", study_id=study_id, detail={"views": len(images)})
        return self.get_study(study_id, actor)

    def _attach(self, s: Session, study_id: str, images: Sequence[NewImage], *, start: int) -> None:
        for offset, img in enumerate(images):
            self._write_png(img)
            if s.get(ImageBlob, img.content_hash) is None:
                s.add(ImageBlob(hash=img.content_hash, width=img.width, height=img.height, created_at=_utcnow()))
                if self.image_mode == "database":
                    s.add(ImageData(hash=img.content_hash, png=img.png, original_png=img.original_png))
                s.flush()
            s.add(StudyImage(
                study_id=study_id, image_hash=img.content_hash, position=start + offset, view=img.view,
                label=img.label or f"view {start + offset + 1}", image_metadata=dict(img.metadata),
                warnings=list(img.warnings), cxr_likeness=float(img.cxr_likeness),
            ))

    def get_study(self, study_id: str, actor: str) -> StudyInfo:
        with self._transaction() as s:
            study = self._owned_study(s, study_id, actor)
            return StudyInfo(
                id=study.id, owner=study.owner, created_at=study.created_at,
                images=tuple(
                    ImageInfo(content_hash=i.image_hash, path=self._local_image(s, i.image_hash), position=i.position,
                              view=i.view, label=i.label, metadata=dict(i.image_metadata),
                              warnings=tuple(i.warnings), cxr_likeness=i.cxr_likeness,
                              original_path=self._kept_original(i.image_hash))
                    for i in study.images
                ),
                draft_ids=tuple(d.id for d in study.drafts),
            )

    def _kept_original(self, content_hash: str) -> Path | None:
        path = self.original_path(content_hash)
        return path if path.exists() else None

    def set_view(self, study_id: str, actor: str, *, position: int, view: str) -> StudyInfo:
        """Set the view position (``pa``/``ap``/``lateral``/``unknown``) of one image of a study, e.g. a PNG's,
        which carries none; the audit records the change (no pixels, no names)."""
        if view not in IMAGE_VIEWS:
            raise StoreError(f"unknown view {view!r}; allowed: {list(IMAGE_VIEWS)}")
        with self._transaction() as s:
            study = self._owned_study(s, study_id, actor)
            image = next((i for i in study.images if i.position == position), None)
            if image is None:
                raise StoreError(f"study {study_id!r} has no view at position {position!r}")
            if image.view != view:
                image.view = view
                self._audit(s, actor, "study.set_view", study_id=study_id,
                            detail={"position": position, "view": view})
        return self.get_study(study_id, actor)

    def _owned_study(self, s: Session, study_id: str, actor: str) -> Study:
        study = s.get(Study, study_id) if study_id else None
        if study is None:
            raise NotFoundError(f"study {study_id!r} does not exist (it may have been deleted)")
        if study.owner != actor:
            raise AccessError(f"study {study_id!r} belongs to another user")
        return study

    # ------------------------------------------------------------------ drafts, edits, signatures
    def add_draft(self, new: NewDraft) -> DraftInfo:
        draft_id = _new_id()
        with self._transaction() as s:
            self._owned_study(s, new.study_id, new.author)
            s.add(DraftRow(
                id=draft_id, study_id=new.study_id, parent_id=new.parent_id, author=new.author,
                created_at=_utcnow(), model=new.model, model_revision=new.model_revision, sampler=new.sampler,
                seed=new.seed, language=new.language, settings=dict(new.settings), report=new.report,
                findings=new.findings, impression=new.impression, trace=list(new.trace),
                timings=dict(new.timings), warnings=list(new.warnings), signed_at=None, signed_by=None,
            ))
            self._audit(s, new.author, "draft.create", study_id=new.study_id, draft_id=draft_id,
                        detail={"sampler": new.sampler, "model": new.model, "revision": new.model_revision,
                                "parent": new.parent_id})
        return self.get_draft(draft_id, new.author)

    def get_draft(self, draft_id: str, actor: str) -> DraftInfo:
        with self._transaction() as s:
            return self._draft_info(self._owned_draft(s, draft_id, actor))

    def _owned_draft(self, s: Session, draft_id: str, actor: str, *, for_update: bool = False) -> DraftRow:
        """The actor's draft; ``for_update`` locks its row until the transaction ends (server databases: writers
        to one draft take turns, so the version check below sees every committed save)."""
        draft = s.get(DraftRow, draft_id, with_for_update=for_update and not self.sqlite) if draft_id else None
        if draft is None:
            raise NotFoundError(f"draft {draft_id!r} does not exist (generate a report first, or it was deleted)")
        if draft.study.owner != actor:
            raise AccessError(f"draft {draft_id!r} belongs to another user")
        return draft

    @staticmethod
    def _check_reasons(reasons: Sequence[str]) -> tuple[str, ...]:
        bad = [r for r in reasons if r not in EDIT_REASONS]
        if bad:
            raise StoreError(f"unknown edit reasons {bad}; allowed: {list(EDIT_REASONS)}")
        return tuple(dict.fromkeys(reasons))

    def _add_edit(self, s: Session, draft: DraftRow, actor: str, kind: str, *, findings: str, impression: str,
                  reasons: Sequence[str], comment: str) -> EditRow:
        addendum = kind == "addendum"
        number = 1 + sum(1 for e in draft.edits if (e.kind == "addendum") == addendum)
        row = EditRow(
            draft_id=draft.id, kind=kind, author=actor, created_at=_utcnow(), findings=findings,
            impression=impression, reasons=list(self._check_reasons(reasons)), comment=comment,
            seconds_since_draft=(_utcnow() - draft.created_at).total_seconds(),
            version=None if addendum else number, addendum=number if addendum else None,
        )
        s.add(row)
        s.flush()
        return row

    @staticmethod
    def _check_version(draft: DraftRow, expected: int | None) -> None:
        """Optimistic concurrency: refuse a write based on another version than the stored one."""
        if expected is None:
            return
        if expected < 0:
            raise StoreError(f"a draft version is a count of saved versions (>= 0), got {expected}")
        stored = sum(1 for e in draft.edits if e.kind != "addendum")
        if stored != expected:
            raise StaleVersionError(
                f"draft {draft.id!r} is at version {stored}, but this editor holds version {expected}: it was "
                "changed elsewhere (another tab or window); open the draft again before saving"
            )

    def _refuse_if_signed(self, draft: DraftRow) -> None:
        if draft.signed_at is not None:
            raise SignedReportError(
                f"draft {draft.id!r} was signed by {draft.signed_by} at {draft.signed_at:%Y-%m-%d %H:%M} UTC; "
                "it can no longer be edited: add an addendum instead"
            )

    def _add_checked_edit(self, s: Session, draft_id: str, actor: str, kind: str, expected_version: int | None,
                          **text: Any) -> tuple[Any, Any]:
        """An edit of an owned, unsigned draft whose stored version is the caller's (one transaction)."""
        draft = self._owned_draft(s, draft_id, actor, for_update=True)
        self._refuse_if_signed(draft)
        self._check_version(draft, expected_version)
        return draft, self._add_edit(s, draft, actor, kind, **text)

    def save_edit(self, draft_id: str, actor: str, *, findings: str, impression: str,
                  reasons: Sequence[str] = (), comment: str = "", expected_version: int | None = None) -> EditInfo:
        """Append a version of the report text exactly as given (no trimming or normalising).

        ``expected_version`` (the number of saved versions the caller's text is based on) is checked in the
        same transaction; ``None`` skips the check (API callers that do not track versions).
        """
        def write(s: Session) -> EditInfo:
            draft, row = self._add_checked_edit(s, draft_id, actor, "edit", expected_version, findings=findings,
                                                impression=impression, reasons=reasons, comment=comment)
            self._audit(s, actor, "edit.save", study_id=draft.study_id, draft_id=draft_id, edit_id=row.id,
                        detail={"edit": row.id, "reasons": list(row.reasons)})
            return self._edit_info(row)

        return self._numbered_write(draft_id, expected_version, write)

    def sign(self, draft_id: str, actor: str, *, findings: str, impression: str,
             reasons: Sequence[str] = (), comment: str = "", expected_version: int | None = None) -> DraftInfo:
        """Store the final text and freeze the draft; later changes are addenda (version check as ``save_edit``)."""
        if not (findings.strip() or impression.strip()):
            raise StoreError(f"cannot sign draft {draft_id!r}: findings and impression are both empty")

        def write(s: Session) -> None:
            draft, row = self._add_checked_edit(s, draft_id, actor, "sign", expected_version, findings=findings,
                                                impression=impression, reasons=reasons, comment=comment)
            draft.signed_at, draft.signed_by = row.created_at, actor
            self._audit(s, actor, "report.sign", study_id=draft.study_id, draft_id=draft_id, edit_id=row.id,
                        detail={"edit": row.id, "reasons": list(row.reasons),
                                "seconds_since_draft": round(row.seconds_since_draft, 3)})

        self._numbered_write(draft_id, expected_version, write)
        return self.get_draft(draft_id, actor)

    def add_addendum(self, draft_id: str, actor: str, text_: str) -> EditInfo:
        if not text_.strip():
            raise StoreError("an addendum needs some text")

        def write(s: Session) -> EditInfo:
            draft = self._owned_draft(s, draft_id, actor, for_update=True)
            if draft.signed_at is None:
                raise StoreError(f"draft {draft_id!r} is not signed yet: edit the report instead of adding an addendum")
            findings, impression = self._draft_info(draft).current
            row = self._add_edit(s, draft, actor, "addendum", findings=findings, impression=impression,
                                 reasons=(), comment=text_)
            self._audit(s, actor, "addendum.add", study_id=draft.study_id, draft_id=draft_id, edit_id=row.id,
                        detail={"edit": row.id})
            return self._edit_info(row)

        return self._numbered_write(draft_id, None, write)

    #: Tries of a write without a version basis (an addendum, a save without ``expected_version``) whose number
    #: another writer took first.
    NUMBER_RETRIES = 8

    def _numbered_write(self, draft_id: str, expected_version: int | None, write: Callable[[Session], _T]) -> _T:
        """Run ``write`` (which appends a numbered edit) in a transaction. When another writer committed the same
        version number first (the unique constraint refuses it), a save based on a version is refused with
        :class:`StaleVersionError`, never merged; a write without one (an addendum, an unversioned API save)
        is tried again with the next number."""
        for _ in range(self.NUMBER_RETRIES):
            try:
                with self._transaction() as s:
                    return write(s)
            except IntegrityError as err:
                message = str(err.orig)
                # PostgreSQL names the index, SQLite its columns.
                version = "uq_edit_draft_version" in message or "edit.draft_id, edit.version" in message
                addendum = "uq_edit_draft_addendum" in message or "edit.draft_id, edit.addendum" in message
                if not (version or addendum):
                    raise
                if version and expected_version is not None:
                    raise StaleVersionError(
                        f"draft {draft_id!r} was saved elsewhere at the same moment (another tab, window or app "
                        f"process): this editor holds version {expected_version}, which is no longer the latest; "
                        "open the draft again before saving") from None
        raise StoreError(f"draft {draft_id!r} is being changed by many writers at once; save again")

    # ------------------------------------------------------------------ queries
    def history(self, owner: str, *, limit: int = 500) -> list[HistoryRow]:
        """The owner's drafts (and studies without a draft yet), newest first."""
        rows: list[HistoryRow] = []
        with self._transaction() as s:
            studies = s.scalars(
                select(Study).where(Study.owner == owner).order_by(Study.created_at.desc()).limit(limit)
            ).all()
            for study in studies:
                if not study.drafts:
                    rows.append(HistoryRow(study.id, None, study.created_at, "", "", "no draft", None, len(study.images)))
                for d in reversed(study.drafts):
                    status = "signed" if d.signed_at else ("edited" if any(e.kind != "addendum" for e in d.edits) else "draft")
                    rows.append(HistoryRow(study.id, d.id, d.created_at, d.sampler, d.model, status, d.signed_at,
                                           len(study.images), warnings=len(d.warnings or ())))
        return sorted(rows, key=lambda r: r.created_at, reverse=True)

    def worklist(self, owner: str, *, query: str = "", limit: int = 500) -> list[WorklistEntry]:
        """The owner's studies, newest first, one entry each; ``query`` keeps those whose id, a draft's id,
        report text (drafted or any saved version) or indication contains it (case-insensitive for ASCII).

        The filter runs in SQL with ``query`` as a bound parameter (``LIKE`` with its wildcards escaped).
        """
        query = (query or "").strip()
        if limit < 1:
            raise StoreError(f"a worklist limit is a positive number of studies, got {limit!r}")
        with self._transaction() as s:
            select_studies = select(Study).where(Study.owner == owner)
            if query:
                pattern = like_pattern(query)

                def like(column: Any) -> Any:  # SQLite's LIKE ignores ASCII case; PostgreSQL's needs ILIKE
                    return (column.like if self.sqlite else column.ilike)(pattern, escape=LIKE_ESCAPE)

                edit_match = select(EditRow.id).where(
                    EditRow.draft_id == DraftRow.id,
                    or_(like(EditRow.findings), like(EditRow.impression)),
                ).exists()
                draft_match = select(DraftRow.id).where(
                    DraftRow.study_id == Study.id,
                    or_(like(DraftRow.id), like(DraftRow.report), like(DraftRow.findings), like(DraftRow.impression),
                        like(DraftRow.settings["indication"].as_string()), edit_match),
                ).exists()
                select_studies = select_studies.where(or_(like(Study.id), draft_match))
            studies = s.scalars(select_studies.order_by(Study.created_at.desc(), Study.id).limit(limit)).all()
            return [self._worklist_entry(s, study) for study in studies]

    def _worklist_entry(self, s: Session, study: Study) -> WorklistEntry:
        signed = [d for d in study.drafts if d.signed_at is not None]
        shown = (signed or list(study.drafts) or [None])[-1]
        first = self._local_image(s, study.images[0].image_hash) if study.images else None
        common = {"study_id": study.id, "created_at": study.created_at, "views": len(study.images),
                  "drafts": len(study.drafts), "first_image": first}
        if shown is None:
            return WorklistEntry(draft_id=None, state="no draft", versions=0, updated_at=study.created_at,
                                 findings="", impression="", indication="", **common)
        draft = self._draft_info(shown)
        findings, impression = draft.current
        times = [draft.created_at, *(e.created_at for e in draft.versions)]
        return WorklistEntry(draft_id=draft.id, state=draft.status, versions=len(draft.versions),
                             updated_at=max(times), findings=findings, impression=impression,
                             indication=str(draft.settings.get("indication") or ""), warnings=len(draft.warnings),
                             **common)

    def signed_drafts(self, owner: str, *, since: datetime | None = None,
                      until: datetime | None = None) -> list[tuple[DraftInfo, StudyInfo]]:
        """Signed drafts of ``owner`` whose signature time lies in [since, until), oldest first."""
        with self._transaction() as s:
            query = (select(DraftRow.id).join(Study).where(Study.owner == owner, DraftRow.signed_at.is_not(None))
                     .order_by(DraftRow.signed_at))
            if since is not None:
                query = query.where(DraftRow.signed_at >= since)
            if until is not None:
                query = query.where(DraftRow.signed_at < until)
            ids = list(s.scalars(query))
        out = []
        for draft_id in ids:
            draft = self.get_draft(draft_id, owner)
            out.append((draft, self.get_study(draft.study_id, owner)))
        return out

    def audit_trail(self, *, study_id: str | None = None, draft_id: str | None = None) -> list[AuditInfo]:
        with self._transaction() as s:
            query = select(AuditRow).order_by(AuditRow.id)
            if study_id is not None:
                query = query.where(AuditRow.study_id == study_id)
            if draft_id is not None:
                query = query.where(AuditRow.draft_id == draft_id)
            return [AuditInfo(r.at, r.actor, r.action, r.study_id, r.draft_id, dict(r.detail)) for r in s.scalars(query)]

    def record_export(self, actor: str, *, records: int, images: int) -> None:
        with self._transaction() as s:
            self._audit(s, actor, "export", detail={"records": records, "images": images})

    # ------------------------------------------------------------------ deletion
    def delete_study(self, study_id: str, actor: str) -> dict[str, int]:
        """Delete a study with its image links, drafts, edits and now-unused PNG files.

        The audit keeps one ``study.delete`` event with counts only (no text, no pixels, no hashes).
        """
        with self._transaction() as s:
            study = self._owned_study(s, study_id, actor)
            hashes = {i.image_hash for i in study.images}
            counts = {
                "views": len(study.images),
                "drafts": len(study.drafts),
                "edits": sum(len(d.edits) for d in study.drafts),
            }
            # In SQL, not through the loaded rows: the database cascades to image links, drafts, edits and
            # explanations (PostgreSQL refuses a direct DELETE of an edit or a signed draft, not this cascade).
            s.execute(delete(Study).where(Study.id == study_id), execution_options={"synchronize_session": False})
            s.expunge_all()
            still_used = set(s.scalars(select(StudyImage.image_hash).where(StudyImage.image_hash.in_(hashes))))
            orphans = hashes - still_used
            for h in orphans:
                blob = s.get(ImageBlob, h)
                if blob is not None:
                    s.delete(blob)
            self._audit(s, actor, "study.delete", study_id=study_id, detail=dict(counts))
        for h in orphans:  # database mode: this process's cache (other processes drop theirs when they next open)
            self._image_file(h).unlink(missing_ok=True)
            self.original_path(h).unlink(missing_ok=True)
        counts["files"] = len(orphans)
        return counts

    # ------------------------------------------------------------------ explanations
    def get_explanation(self, draft_id: str, actor: str, key: str) -> ExplanationInfo | None:
        """The stored explanation of ``key`` for one of the actor's drafts, or None."""
        with self._transaction() as s:
            self._owned_draft(s, draft_id, actor)
            row = s.scalars(select(ExplanationRow).where(ExplanationRow.draft_id == draft_id,
                                                         ExplanationRow.key == key)).first()
            return self._explanation_info(row) if row is not None else None

    def add_explanation(self, draft_id: str, actor: str, *, key: str, method: str, label: str, detail: str,
                        seconds: float, maps: list[list[list[float]]]) -> ExplanationInfo:
        """Store an explanation with its draft (deleted with the study; the audit records the request only)."""
        with self._transaction() as s:
            draft = self._owned_draft(s, draft_id, actor)
            row = ExplanationRow(draft_id=draft_id, key=key, created_at=_utcnow(), method=method, label=label,
                                 detail=detail, seconds=float(seconds), maps=maps)
            s.add(row)
            self._audit(s, actor, "draft.explain", study_id=draft.study_id, draft_id=draft_id,
                        detail={"method": method})
            s.flush()
            return self._explanation_info(row)

    @staticmethod
    def _explanation_info(row: ExplanationRow) -> ExplanationInfo:
        return ExplanationInfo(draft_id=row.draft_id, key=row.key, method=row.method, label=row.label,
                               detail=row.detail, seconds=row.seconds, maps=row.maps, created_at=row.created_at)

    def count(self, table: str) -> int:
        """Rows in one table (tests and health checks)."""
        models = (Study, ImageBlob, ImageData, StudyImage, DraftRow, EditRow, AuditRow, ExplanationRow)
        model = {m.__tablename__: m for m in models}.get(table)
        if model is None:
            raise StoreError(f"unknown table {table!r}")
        with self._transaction() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _audit(s: Session, actor: str, action: str, *, study_id: str | None = None, draft_id: str | None = None,
               detail: dict[str, Any] | None = None, edit_id: int | None = None) -> None:
        s.add(AuditRow(at=_utcnow(), actor=actor, action=action, study_id=study_id, draft_id=draft_id,
                       detail=dict(detail or {}), edit_id=edit_id))

    @staticmethod
    def _edit_info(row: EditRow) -> EditInfo:
        return EditInfo(id=row.id, kind=row.kind, author=row.author, created_at=row.created_at,
                        findings=row.findings, impression=row.impression, reasons=tuple(row.reasons),
                        comment=row.comment, seconds_since_draft=row.seconds_since_draft)

    def _draft_info(self, d: DraftRow) -> DraftInfo:
        return DraftInfo(
            id=d.id, study_id=d.study_id, parent_id=d.parent_id, author=d.author, created_at=d.created_at,
            model=d.model, model_revision=d.model_revision, sampler=d.sampler, seed=d.seed, language=d.language,
            settings=dict(d.settings), report=d.report, findings=d.findings, impression=d.impression,
            trace=list(d.trace), timings=dict(d.timings), warnings=list(d.warnings), signed_at=d.signed_at,
            signed_by=d.signed_by, edits=tuple(self._edit_info(e) for e in d.edits),
        )

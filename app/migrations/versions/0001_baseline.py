"""The schema the app created before migrations existed (stores without ``alembic_version``).

Tables that already exist are left as they are, so a store written by an earlier release upgrades in
place; a new database gets every table. On SQLite the append-only and signed-report triggers are part
of this schema (``IF NOT EXISTS``: a store already holds them).

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS edit_append_only BEFORE UPDATE ON edit
       BEGIN SELECT RAISE(ABORT, 'edits are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS signed_draft_immutable BEFORE UPDATE ON draft
       WHEN OLD.signed_at IS NOT NULL
       BEGIN SELECT RAISE(ABORT, 'a signed report is immutable'); END""",
    """CREATE TRIGGER IF NOT EXISTS signed_draft_addenda_only BEFORE INSERT ON edit
       WHEN NEW.kind != 'addendum' AND (SELECT signed_at FROM draft WHERE id = NEW.draft_id) IS NOT NULL
       BEGIN SELECT RAISE(ABORT, 'a signed report takes addenda only'); END""",
)


def _study() -> None:
    op.create_table(
        "study",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_study_owner", "study", ["owner"])


def _image() -> None:
    op.create_table(
        "image",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def _audit() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("study_id", sa.String(32), nullable=True),
        sa.Column("draft_id", sa.String(32), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_audit_study_id", "audit", ["study_id"])


def _study_image() -> None:
    op.create_table(
        "study_image",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("study.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_hash", sa.String(64), sa.ForeignKey("image.hash", ondelete="RESTRICT"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("view", sa.String(16), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("image_metadata", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("cxr_likeness", sa.Float(), nullable=False),
    )
    op.create_index("ix_study_image_image_hash", "study_image", ["image_hash"])
    op.create_index("ix_study_image_study_id", "study_image", ["study_id"])


def _draft() -> None:
    op.create_table(
        "draft",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("study.id", ondelete="CASCADE"), nullable=False),
        sa.Column("parent_id", sa.String(32), nullable=True),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("model_revision", sa.Text(), nullable=False),
        sa.Column("sampler", sa.String(16), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("language", sa.String(8), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("impression", sa.Text(), nullable=False),
        sa.Column("trace", sa.JSON(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("signed_at", sa.DateTime(), nullable=True),
        sa.Column("signed_by", sa.String(128), nullable=True),
    )
    op.create_index("ix_draft_study_id", "draft", ["study_id"])


def _explanation() -> None:
    op.create_table(
        "explanation",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("draft_id", sa.String(32), sa.ForeignKey("draft.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("maps", sa.JSON(), nullable=False),
    )
    op.create_index("ix_explanation_draft_id", "explanation", ["draft_id"])


def _edit() -> None:
    op.create_table(
        "edit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("draft_id", sa.String(32), sa.ForeignKey("draft.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("impression", sa.Text(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("seconds_since_draft", sa.Float(), nullable=False),
    )
    op.create_index("ix_edit_draft_id", "edit", ["draft_id"])


#: In dependency order (a table after those its foreign keys name).
TABLES: tuple[tuple[str, Callable[[], None]], ...] = (
    ("study", _study), ("image", _image), ("audit", _audit), ("study_image", _study_image), ("draft", _draft),
    ("explanation", _explanation), ("edit", _edit),
)


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for name, create in TABLES:
        if name not in existing:
            create()
    if bind.dialect.name == "sqlite":
        for ddl in SQLITE_TRIGGERS:
            op.execute(ddl)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: restore the backup taken before the upgrade instead")

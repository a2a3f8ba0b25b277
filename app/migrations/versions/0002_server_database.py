"""What several app processes on one database need: images in the database, numbered versions and
addenda under unique constraints, one audit row per edit, and (on PostgreSQL) the database itself
refusing to rewrite signed reports, edits and the audit trail.

* ``image_data``: the de-identified PNG bytes (and the 16-bit original) of an ``image`` row, used when
  the store keeps images in the database (a server database without a shared image folder);
* ``edit.version`` (1, 2, ... per draft for saved versions and the signature) and ``edit.addendum``
  (1, 2, ... per draft for addenda), each unique per draft: two saves of the same version cannot both
  commit; existing rows are numbered in the order they were written;
* ``audit.edit_id``: the edit an ``edit.save`` / ``report.sign`` / ``addendum.add`` event records
  (unique with the event's draft), filled from the event's detail for existing rows;
* PostgreSQL: ``explanation.key`` becomes ``TEXT`` (SQLite never enforced the length), and triggers
  refuse UPDATE/DELETE/TRUNCATE of audit rows, UPDATE of edits and of signed drafts, a direct DELETE of
  an edit or a signed draft (deleting the whole study still cascades), and a non-addendum edit of a
  signed draft. SQLite keeps the triggers of ``0001`` and gets the two DELETE guards (there a cascade is
  told apart by its parent row being gone already).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

EDIT_EVENTS = ("edit.save", "report.sign", "addendum.add")

PG_FUNCTIONS = (
    """CREATE OR REPLACE FUNCTION echo_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation';
         RETURN NULL;
       END $$""",
    # Depth 1: the trigger of a DELETE statement on this table. Deeper: the cascade of a deleted study.
    """CREATE OR REPLACE FUNCTION echo_refuse_direct_delete() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF pg_trigger_depth() < 2 THEN
           RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation';
         END IF;
         RETURN OLD;
       END $$""",
    """CREATE OR REPLACE FUNCTION echo_signed_takes_addenda_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF NEW.kind <> 'addendum' AND EXISTS (
             SELECT 1 FROM draft WHERE id = NEW.draft_id AND signed_at IS NOT NULL) THEN
           RAISE EXCEPTION 'a signed report takes addenda only' USING ERRCODE = 'restrict_violation';
         END IF;
         RETURN NEW;
       END $$""",
)
PG_TRIGGERS = (
    ("CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit FOR EACH ROW "
     "EXECUTE FUNCTION echo_refuse('the audit trail is append-only')"),
    ("CREATE TRIGGER edit_append_only BEFORE UPDATE ON edit FOR EACH ROW "
     "EXECUTE FUNCTION echo_refuse('edits are append-only')"),
    ("CREATE TRIGGER edit_no_direct_delete BEFORE DELETE ON edit FOR EACH ROW "
     "EXECUTE FUNCTION echo_refuse_direct_delete('edits are append-only (only deleting the study removes them)')"),
    ("CREATE TRIGGER signed_draft_immutable BEFORE UPDATE ON draft FOR EACH ROW WHEN (OLD.signed_at IS NOT NULL) "
     "EXECUTE FUNCTION echo_refuse('a signed report is immutable')"),
    ("CREATE TRIGGER signed_draft_no_direct_delete BEFORE DELETE ON draft FOR EACH ROW "
     "WHEN (OLD.signed_at IS NOT NULL) "
     "EXECUTE FUNCTION echo_refuse_direct_delete('a signed report is immutable (only deleting the study removes it)')"),
    ("CREATE TRIGGER signed_draft_addenda_only BEFORE INSERT ON edit FOR EACH ROW "
     "EXECUTE FUNCTION echo_signed_takes_addenda_only()"),
    *(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT "
      f"EXECUTE FUNCTION echo_refuse('{table} rows are removed one study at a time, never truncated')"
      for table in ("study", "draft", "edit", "audit")),
)
SQLITE_DELETE_GUARDS = (
    """CREATE TRIGGER IF NOT EXISTS edit_no_direct_delete BEFORE DELETE ON edit
       WHEN EXISTS (SELECT 1 FROM draft WHERE id = OLD.draft_id)
       BEGIN SELECT RAISE(ABORT, 'edits are append-only (only deleting the study removes them)'); END""",
    """CREATE TRIGGER IF NOT EXISTS signed_draft_no_direct_delete BEFORE DELETE ON draft
       WHEN OLD.signed_at IS NOT NULL AND EXISTS (SELECT 1 FROM study WHERE id = OLD.study_id)
       BEGIN SELECT RAISE(ABORT, 'a signed report is immutable (only deleting the study removes it)'); END""",
)
#: SQLite triggers that refuse the backfill's UPDATEs: dropped for it and created again (same transaction).
SQLITE_UPDATE_GUARDS = {
    "edit_append_only": """CREATE TRIGGER edit_append_only BEFORE UPDATE ON edit
       BEGIN SELECT RAISE(ABORT, 'edits are append-only'); END""",
    "audit_no_update": """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
}


def _numbered_edits(bind: sa.engine.Connection) -> list[dict[str, Any]]:
    """Per draft, in write order: saved versions 1, 2, ... and addenda 1, 2, ..."""
    counts: dict[tuple[str, bool], int] = {}
    out = []
    for edit_id, draft_id, kind in bind.execute(sa.text("SELECT id, draft_id, kind FROM edit ORDER BY id")):
        is_addendum = kind == "addendum"
        number = counts[(draft_id, is_addendum)] = counts.get((draft_id, is_addendum), 0) + 1
        out.append({"id": edit_id, "version": None if is_addendum else number,
                    "addendum": number if is_addendum else None})
    return out


def _audit_edit_ids(bind: sa.engine.Connection) -> list[dict[str, Any]]:
    rows = bind.execute(sa.text("SELECT id, detail FROM audit WHERE action IN :events")
                        .bindparams(sa.bindparam("events", expanding=True)), {"events": list(EDIT_EVENTS)})
    out = []
    for audit_id, detail in rows:
        detail = json.loads(detail) if isinstance(detail, str) else (detail or {})
        if isinstance(detail.get("edit"), int):
            out.append({"id": audit_id, "edit_id": detail["edit"]})
    return out


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    op.create_table(
        "image_data",
        sa.Column("hash", sa.String(64), sa.ForeignKey("image.hash", ondelete="CASCADE"), primary_key=True),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.Column("original_png", sa.LargeBinary(), nullable=True),
    )
    op.add_column("edit", sa.Column("version", sa.Integer(), nullable=True))
    op.add_column("edit", sa.Column("addendum", sa.Integer(), nullable=True))
    op.add_column("audit", sa.Column("edit_id", sa.Integer(), nullable=True))
    if sqlite:
        for name in SQLITE_UPDATE_GUARDS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    edits = _numbered_edits(bind)
    if edits:
        bind.execute(sa.text("UPDATE edit SET version = :version, addendum = :addendum WHERE id = :id"), edits)
    events = _audit_edit_ids(bind)
    if events:
        bind.execute(sa.text("UPDATE audit SET edit_id = :edit_id WHERE id = :id"), events)
    if sqlite:
        for ddl in (*SQLITE_UPDATE_GUARDS.values(), *SQLITE_DELETE_GUARDS):
            op.execute(ddl)
    op.create_index("uq_edit_draft_version", "edit", ["draft_id", "version"], unique=True)
    op.create_index("uq_edit_draft_addendum", "edit", ["draft_id", "addendum"], unique=True)
    # With the draft: SQLite may reuse the id of a deleted study's last edit, never a draft's id.
    op.create_index("uq_audit_draft_edit", "audit", ["draft_id", "edit_id"], unique=True)
    if not sqlite:
        op.alter_column("explanation", "key", type_=sa.Text(), existing_type=sa.String(128), existing_nullable=False)
    if bind.dialect.name == "postgresql":
        for ddl in (*PG_FUNCTIONS, *PG_TRIGGERS):
            op.execute(ddl)


def downgrade() -> None:
    raise NotImplementedError("schema 0002 is not undone: restore the backup taken before the upgrade instead")

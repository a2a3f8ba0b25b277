"""Crash test: ``kill -9`` the web app in the middle of a burst of saves, restart it, audit the database.

Usage::

    python scripts/crash_test.py                       # 3 kill/restart rounds, 8 saving threads
    python scripts/crash_test.py --rounds 1 --threads 4 --kill-after 40 --open-store --out scratch/reliability
    python scripts/crash_test.py --replicas 2 --database-url postgresql+psycopg://echo:PW@db-host/echo

Each round: the app (child process, WAL journal, ``ECHO_AUTH`` set) serves ``--threads`` clients that save
edits with unique text as fast as they can, each on its own draft (drafts are seeded into the database
before the first start, so no model is needed). Once ``--kill-after`` saves have been acknowledged the
server gets SIGKILL while saves are in flight. Then the app is started again on the same data directory
(or, with ``--open-store``, only the store is opened, as the app does at start-up), ``PRAGMA
integrity_check`` and ``PRAGMA foreign_key_check`` are run, and every save acknowledged before the kill
must be stored exactly, on its draft and by its user. Written to ``<out>/crash.json``.

What this shows and what it does not: a killed process loses nothing SQLite has committed (the commit is
in the WAL file, in the OS page cache). Surviving *power loss* as well needs the commit on disk before the
acknowledgement, which is what ``PRAGMA synchronous=FULL`` (app/store.py) does; pulling the plug is not
part of this test.

With ``--replicas N`` (a server database given by ``--database-url``, upgraded first with ``echo-app db
upgrade``) N app processes share the database and the saving threads are spread over them (thread *i* on
replica *i mod N*). Only replica 0 is killed: the others must keep acknowledging saves for
``--survive-s`` seconds after the kill (``survivor_acks``), then replica 0 is restarted. Besides lost and
mixed saves, every committed change must have exactly one audit row, checked by a join of ``edit`` and
``audit`` (``audit_mismatches``); ``PRAGMA integrity_check`` applies to SQLite only.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's app, not an installed one
from app_process import ROOT, AppProcess, auth_value, credentials, start_app, upgrade_database
from load_test import Save, audit_mismatches, audit_saves, query_database

__all__ = ["CrashReport", "main", "run_crash", "seed_drafts"]


@dataclass
class Round:
    """One kill/restart cycle."""

    acknowledged: int
    in_flight_at_kill: int
    in_flight_stored: int
    save_p50_s: float | None
    integrity_check: str
    foreign_key_violations: int
    lost: int
    mixed: int
    restarted_in_s: float | None
    save_after_restart: bool | None
    survivor_acks: int | None = None  # saves acknowledged by the other replicas after the kill
    audit_mismatches: int = 0  # edits without exactly one audit row, plus audit rows of edits never stored


@dataclass
class CrashReport:
    threads: int
    kill_after: int
    restart: bool
    journal_mode: str
    synchronous: str
    rounds: list[Round] = field(default_factory=list)
    replicas: int = 1
    database: str = "sqlite"

    @property
    def ok(self) -> bool:
        return bool(self.rounds) and all(
            r.integrity_check in ("ok", NOT_SQLITE) and not r.foreign_key_violations and not r.lost and not r.mixed
            and r.save_after_restart is not False and not r.audit_mismatches
            and (r.survivor_acks is None or r.survivor_acks > 0)
            for r in self.rounds
        )


#: ``integrity_check`` of a server database (the server keeps its own integrity; the joins check the rows).
NOT_SQLITE = "n/a (server database)"


def seed_drafts(data_dir: Path, users: list[str], *, database_url: str | None = None) -> list[tuple[str, str]]:
    """One study with one draft per user in a new store (or the database at ``database_url``, upgraded
    already); returns (user, draft id) pairs."""
    from app.store import NewDraft, NewImage, Store
    from echo_model.imaging import load_image, to_deidentified_png
    from echo_model.imaging.synthetic import phantom_cxr

    store = Store(data_dir, single_connection=False, url=database_url)
    drafts = []
    try:
        for i, user in enumerate(users):
            loaded = load_image(_png_bytes(phantom_cxr((128, 128), seed=i)), name="view 1")
            view = NewImage(content_hash=loaded.content_hash, png=to_deidentified_png(loaded),
                            width=loaded.size[0], height=loaded.size[1])
            study = store.create_study(user, [view])
            draft = store.add_draft(NewDraft(
                study_id=study.id, author=user, model="seeded", model_revision="none", sampler="echo",
                language="en", report="Findings: seed. Impression: seed.", findings="seed.", impression="seed."))
            drafts.append((user, draft.id))
    finally:
        store.close()
    return drafts


def _png_bytes(image: object) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # type: ignore[attr-defined]
    return buffer.getvalue()


class _Burst:
    """Saving threads that record every acknowledged save until the server stops answering."""

    def __init__(self, apps: list[AppProcess], drafts: list[tuple[str, str]], creds: dict[str, str],
                 round_index: int):
        self.acks: list[Save] = []
        self.ack_replica: list[int] = []  # the replica that acknowledged each of ``acks``
        self.latencies: list[float] = []
        self.in_flight: dict[int, Save] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i, apps[i % len(apps)].url, user, creds[user], draft_id,
                                                     round_index, i % len(apps)), daemon=True)
            for i, (user, draft_id) in enumerate(drafts)
        ]

    def _run(self, index: int, url: str, user: str, password: str, draft_id: str, round_index: int,
             replica: int) -> None:
        from gradio_client import Client

        try:
            client = Client(url, auth=(user, password), verbose=False)
        except Exception:  # noqa: BLE001  (the server may already be gone)
            return
        n = 0
        while not self.stop.is_set():
            tag = uuid.uuid4().hex
            findings = f"Crash round {round_index} thread {index} save {n} [{tag}]"
            save = Save(user=user, draft_id=draft_id, findings=findings, impression=f"impression {tag}")
            with self.lock:
                self.in_flight[index] = save
            t0 = time.perf_counter()
            try:
                status, _ = client.predict(draft_id, save.findings, save.impression, [], "", api_name="/save_edit")
            except Exception:  # noqa: BLE001  (killed server: the save is in flight, not acknowledged)
                return
            with self.lock:
                del self.in_flight[index]
                if str(status).startswith("Saved version"):
                    self.acks.append(save)
                    self.ack_replica.append(replica)
                    self.latencies.append(time.perf_counter() - t0)
            n += 1

    def count(self) -> int:
        with self.lock:
            return len(self.acks)


def _integrity(db: Path) -> tuple[str, int]:
    with sqlite3.connect(db) as conn:
        check = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
        violations = len(conn.execute("PRAGMA foreign_key_check").fetchall())
    return check, violations


def _stored(db: Path | str, saves: list[Save]) -> int:
    texts = {row[0] for row in query_database(db, "SELECT findings FROM edit")}
    return sum(1 for s in saves if s.findings in texts)


def run_crash(work_dir: Path, *, rounds: int = 3, threads: int = 8, kill_after: int = 200, restart: bool = True,
              burst_timeout_s: float = 300.0, replicas: int = 1, database_url: str | None = None,
              survive_s: float = 3.0) -> CrashReport:
    """Seed drafts, then ``rounds`` times: serve, save in a burst, kill -9 mid-burst, recover, audit.

    With ``replicas`` > 1 (``database_url`` required) only replica 0 is killed and the others must keep
    acknowledging saves for ``survive_s`` seconds; ``restart=False`` (reopen the store) is for one replica.
    """
    import numpy as np

    from app.store import Store

    if replicas > 1 and not (database_url and restart):
        raise ValueError(f"{replicas} replicas need a server database (database_url) and restart=True")
    creds = credentials(threads)
    server_dirs = [work_dir / ("server" if replicas == 1 else f"server-{i}") for i in range(replicas)]
    if database_url:
        upgrade_database(database_url, work_dir=work_dir)
    drafts = seed_drafts(server_dirs[0] / "data", list(creds), database_url=database_url)
    db: Path | str = database_url or server_dirs[0] / "data" / "echo.sqlite"
    all_acks: list[Save] = []
    report = CrashReport(threads=threads, kill_after=kill_after, restart=restart, journal_mode="", synchronous="",
                         replicas=replicas, database="sqlite" if database_url is None else "postgresql")

    def start(i: int) -> AppProcess:
        return start_app(server_dirs[i], auth=auth_value(creds), database_url=database_url, replica_id=f"replica-{i}")

    apps: list[AppProcess | None] = [None] * replicas
    try:
        for index in range(rounds):
            apps = [app or start(i) for i, app in enumerate(apps)]
            live = [app for app in apps if app is not None]
            burst = _Burst(live, drafts, creds, index)
            for thread in burst.threads:
                thread.start()
            deadline = time.monotonic() + burst_timeout_s
            while burst.count() < kill_after and time.monotonic() < deadline:
                time.sleep(0.01)
            live[0].kill()
            apps[0] = None
            with burst.lock:
                acks_at_kill = len(burst.acks)
                in_flight = [save for i, save in burst.in_flight.items() if i % replicas == 0]
            survivors = None
            if replicas > 1:  # the other replicas keep serving their sessions
                time.sleep(survive_s)
                with burst.lock:
                    survivors = sum(1 for r in burst.ack_replica[acks_at_kill:] if r != 0)
            burst.stop.set()
            for thread in burst.threads:
                thread.join(timeout=30)
            with burst.lock:
                acks = list(burst.acks)
            all_acks += acks
            restarted_in = saved_after = None
            if restart:
                t0 = time.perf_counter()
                apps[0] = start(0)
                restarted_in = round(time.perf_counter() - t0, 2)
                saved_after = _save_once(apps[0], drafts[0], creds)
            else:
                Store(server_dirs[0] / "data", single_connection=False).close()  # what the app does first at start-up
            check, violations = _integrity(db) if isinstance(db, Path) else (NOT_SQLITE, 0)
            audit = audit_saves(db, all_acks, drafts)
            report.rounds.append(Round(
                acknowledged=len(acks), in_flight_at_kill=len(in_flight), in_flight_stored=_stored(db, in_flight),
                save_p50_s=round(float(np.percentile(burst.latencies, 50)), 4) if burst.latencies else None,
                integrity_check=check, foreign_key_violations=violations, lost=audit["lost"], mixed=audit["mixed"],
                restarted_in_s=restarted_in, save_after_restart=saved_after, survivor_acks=survivors,
                audit_mismatches=audit_mismatches(db),
            ))
    finally:
        for app in apps:
            if app is not None:
                app.stop()
    if isinstance(db, Path):
        report.journal_mode, report.synchronous = _sqlite_modes(server_dirs[0] / "data")
    return report


def _sqlite_modes(data_dir: Path) -> tuple[str, str]:
    """(journal mode, synchronous) of the store's SQLite connections."""
    from sqlalchemy import text

    from app.store import Store

    store = Store(data_dir, single_connection=False)
    try:
        with store.engine.connect() as conn:
            journal = str(conn.execute(text("PRAGMA journal_mode")).scalar())
            level = int(conn.execute(text("PRAGMA synchronous")).scalar() or 0)
    finally:
        store.close()
    return journal, {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))


def _save_once(app: AppProcess, draft: tuple[str, str], creds: dict[str, str]) -> bool:
    from gradio_client import Client

    user, draft_id = draft
    status, _ = Client(app.url, auth=(user, creds[user]), verbose=False).predict(
        draft_id, "After restart.", "Saved.", [], "", api_name="/save_edit")
    return str(status).startswith("Saved version")


def summary(report: CrashReport) -> str:
    lines = [
        (f"{report.replicas} replica(s) on {report.database}; "
         f"{report.threads} saving threads, kill -9 {'of replica 0 ' if report.replicas > 1 else ''}after "
         f"{report.kill_after} acknowledged saves, journal {report.journal_mode or '-'}, synchronous "
         f"{report.synchronous or '-'}, {'restart of the app' if report.restart else 'store reopened'} after each kill")
    ]
    for i, r in enumerate(report.rounds, start=1):
        line = (f"round {i}: acknowledged {r.acknowledged} (p50 {r.save_p50_s} s), in flight at the kill "
                f"{r.in_flight_at_kill} ({r.in_flight_stored} of them stored), integrity_check "
                f"{r.integrity_check!r}, foreign-key violations {r.foreign_key_violations}, lost {r.lost}, "
                f"mixed {r.mixed}, edits without exactly one audit row {r.audit_mismatches}")
        if r.survivor_acks is not None:
            line += f", saves acknowledged by the other replicas after the kill {r.survivor_acks}"
        if r.restarted_in_s is not None:
            line += (f", restarted in {r.restarted_in_s} s, save after restart "
                     f"{'ok' if r.save_after_restart else 'FAILED'}")
        lines.append(line)
    lines.append("RESULT: " + ("PASS" if report.ok else "FAIL"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="saving clients, each with its own user and draft")
    parser.add_argument("--kill-after", type=int, default=200, help="acknowledged saves per round before the kill")
    parser.add_argument("--open-store", action="store_true", help="reopen the store instead of restarting the app")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "reliability")
    parser.add_argument("--replicas", type=int, default=1, help="app processes sharing --database-url")
    parser.add_argument("--database-url", help="ECHO_DATABASE_URL of every replica (default: one SQLite file)")
    parser.add_argument("--survive-s", type=float, default=3.0,
                        help="seconds the other replicas must keep saving after replica 0 is killed")
    args = parser.parse_args(argv)
    if args.replicas > 1 and (not args.database_url or args.open_store):
        parser.error(f"--replicas {args.replicas} needs --database-url (a server database) and no --open-store")
    for name in ("rounds", "threads", "kill_after", "replicas"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    with tempfile.TemporaryDirectory(prefix="echo-crash-") as tmp:
        report = run_crash(Path(tmp), rounds=args.rounds, threads=args.threads, kill_after=args.kill_after,
                           restart=not args.open_store, replicas=args.replicas,
                           database_url=args.database_url, survive_s=args.survive_s)
    print(summary(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "crash.json").write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=1) + "\n",
                                         encoding="utf-8")
    print(f"wrote {args.out / 'crash.json'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

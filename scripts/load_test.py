"""Load test of the web app: N ``gradio_client`` clients drafting and saving at once, then a database audit.

Usage::

    python scripts/load_test.py                      # 16 clients x 3 drafts x 4 saves, drafting line of 8
    python scripts/load_test.py --clients 5 --iterations 2 --saves 2 --queue-size 1 --out scratch/reliability
    python scripts/load_test.py --replicas 2 --database-url postgresql+psycopg://echo:PW@db-host/echo

The app runs in a child process on loopback (``scripts/app_process.py``) with the embedded checkpoint and
``ECHO_AUTH`` set (clients are spread over several users). Every client, released together, repeats:
``/generate`` (retried after a pause when refused as busy), then ``--saves`` ``/save_edit`` calls with
text unique to the client, draft and save. Afterwards the database is read directly (``sqlite3``,
read-only) and every acknowledged save must be there exactly once with its exact text, on its draft and
by its user (0 lost, 0 mixed, 0 duplicated); drafts must belong to the user who asked for them.

With ``--replicas N`` (N > 1, a server database given by ``--database-url``, upgraded first with
``echo-app db upgrade``) N app processes serve the clients, client *i* talking to replica *i mod N*, as a
load balancer with sticky sessions spreads browsers. Each client then signs its last draft, and every
user's signed reports are exported from every replica: the ``records.jsonl`` files must be byte-identical
and hold every signed text (``signed missing`` and ``exports differing`` must be 0).

Printed and written to ``<out>/load.json`` (default ``results/reliability``): p50/p95 latency of drafts
and saves, throughput (accepted drafts per second of wall time), how many drafts were told "busy" and how
fast, saves refused, lost and mixed, the CPU seconds the app and the clients used meanwhile, and where an
accepted draft's time went (medians over the drafts, from
the timings the app returns with each draft; a phase the app does not report shows ``-``):

* ``image``: storing the uploads (``read_s``) plus encoding the views for the model (``encode_s``);
* ``queue``: waiting for admission (``gate_s``) plus waiting for a batch to start (``queue_s``);
* ``forwards``: the sampler's own time (``total_s``: prefill and every forward of the draft's batch);
* ``store``: saving the finished draft in the database (``store_s``);
* ``reply``: the rest of the client's latency after the app's end to end and the store (sending the upload,
  Gradio's queue, streaming every block to the client);
* ``batch rows``: studies decoded together with the draft (1 = alone).

The latency distribution is plotted to ``<out>/load.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import random
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's app, not an installed one
from app_process import ROOT, AppProcess, auth_value, credentials, start_app, upgrade_database

__all__ = ["BUSY_TEXT", "LoadReport", "audit_mismatches", "audit_saves", "main", "read_back_signed", "run_load", "start_replicas"]

#: What a refused draft's message says (app.admission.DraftingBusyError).
BUSY_TEXT = "drafting queue is full"
DRAFT_ID_INDEX = 9  # position of the draft id in /generate's outputs (app.handlers.DRAFT_FIELDS)
TIMING_INDEX = 5  # position of the timings (app.handlers.DRAFT_FIELDS)
#: Phases of an accepted draft: name -> the app's timing keys summed into it (see the module docstring).
PHASES: dict[str, tuple[str, ...]] = {"image": ("read_s", "encode_s"), "queue": ("gate_s", "queue_s"),
                                      "forwards": ("total_s",), "store": ("store_s",)}


@dataclass
class Save:
    """One acknowledged ``/save_edit``: what was sent, by whom, on which draft."""

    user: str
    draft_id: str
    findings: str
    impression: str


@dataclass
class ClientLog:
    """What one client saw."""

    generate_s: list[float] = field(default_factory=list)
    save_s: list[float] = field(default_factory=list)
    busy_s: list[float] = field(default_factory=list)
    busy_messages: set[str] = field(default_factory=set)
    save_refusals: list[str] = field(default_factory=list)
    generate_errors: list[str] = field(default_factory=list)
    drafts: list[tuple[str, str]] = field(default_factory=list)  # (user, draft id)
    saves: list[Save] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)  # per accepted draft (draft_phases)
    signed: list[Save] = field(default_factory=list)  # acknowledged signatures (multi-replica runs)


@dataclass
class LoadReport:
    """The figures of one run (written as JSON)."""

    clients: int
    users: int
    iterations: int
    saves_per_iteration: int
    queue_size: int
    max_new_tokens: int
    wall_s: float
    drafts: int
    generate_p50_s: float | None
    generate_p95_s: float | None
    save_p50_s: float | None
    save_p95_s: float | None
    busy_refusals: int
    busy_p95_s: float | None
    busy_max_s: float | None
    busy_messages: list[str]
    generate_errors: list[str]
    saves_acknowledged: int
    saves_refused: int
    save_refusal_messages: list[str]
    lost: int
    mixed: int
    stored_unacknowledged: int
    drafts_of_wrong_owner: int
    machine: str
    throughput_per_s: float = 0.0
    breakdown_p50_s: dict[str, float | None] = field(default_factory=dict)
    app_cpu_s: float | None = None
    clients_cpu_s: float | None = None
    replicas: int = 1
    database: str = "sqlite"
    duplicated: int = 0
    signed: int = 0
    signed_missing: int = 0
    exports_differing: int = 0
    audit_mismatches: int = 0
    latencies: dict[str, list[float]] = field(repr=False, default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.mixed or self.duplicated or self.saves_refused or self.drafts_of_wrong_owner
                    or self.generate_errors or self.signed_missing or self.exports_differing
                    or self.audit_mismatches)


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def draft_phases(timing: dict[str, object], client_s: float) -> dict[str, float]:
    """Where one accepted draft's time went (:data:`PHASES`, ``reply``, ``batch rows``), from the timings
    the app returned with it and the latency the client saw; a phase the app does not report is left out."""
    phases: dict[str, float] = {}
    for name, keys in PHASES.items():
        values = [float(timing[k]) for k in keys if isinstance(timing.get(k), (int, float))]
        if values:
            phases[name] = sum(values)
    if isinstance(timing.get("end_to_end_s"), (int, float)):
        phases["reply"] = client_s - float(timing["end_to_end_s"]) - phases.get("store", 0.0)
    phases["batch rows"] = float(timing.get("batch_rows", 1))  # type: ignore[arg-type]
    return phases


def _cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of process ``pid`` (None: this one, all its threads), where /proc tells."""
    if pid is None:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _client(index: int, *, url: str, user: str, password: str, image: Path, iterations: int, saves: int,
            max_new_tokens: int, start: threading.Barrier, deadline: float, log: ClientLog,
            sign: bool = False) -> None:
    from gradio_client import Client, handle_file

    # gradio_client opens a new httpx client for every request, and with ssl_verify each one loads the CA
    # bundle: over plain HTTP on loopback that verifies nothing and took half the load generator's CPU, which
    # shares the machine's cores with the app under test.
    client = Client(url, auth=(user, password), verbose=False, ssl_verify=not url.startswith("http://"))
    rng = random.Random(index)
    start.wait()
    for iteration in range(iterations):
        draft_id = ""
        while not draft_id and time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                outputs = client.predict([handle_file(str(image))], max_new_tokens=max_new_tokens,
                                         api_name="/generate")
            except Exception as err:  # noqa: BLE001  (every failure is classified and reported)
                elapsed = time.perf_counter() - t0
                if BUSY_TEXT in str(err):
                    log.busy_s.append(elapsed)
                    log.busy_messages.add(str(err))
                    time.sleep(rng.uniform(0.2, 1.0))
                    continue
                log.generate_errors.append(f"{type(err).__name__}: {err}")
                return
            log.generate_s.append(time.perf_counter() - t0)
            draft_id = str(outputs[DRAFT_ID_INDEX])
            timing = outputs[TIMING_INDEX]
            if isinstance(timing, dict):
                log.phases.append(draft_phases(timing, log.generate_s[-1]))
            log.drafts.append((user, draft_id))
        if not draft_id:
            log.generate_errors.append(f"client {index} got no draft before the deadline")
            return
        for k in range(saves):
            tag = uuid.uuid4().hex
            findings = f"Load test client {index} draft {iteration} save {k}: lungs clear. [{tag}]"
            impression = f"No acute disease ({tag})."
            t0 = time.perf_counter()
            try:
                status, _ = client.predict(draft_id, findings, impression, [], "", api_name="/save_edit")
            except Exception as err:  # noqa: BLE001
                log.save_refusals.append(f"{type(err).__name__}: {err}")
                continue
            log.save_s.append(time.perf_counter() - t0)
            if str(status).startswith("Saved version"):
                log.saves.append(Save(user=user, draft_id=draft_id, findings=findings, impression=impression))
            else:
                log.save_refusals.append(f"unexpected status {status!r}")
    if sign and log.drafts:
        _sign(client, index, user=user, draft_id=log.drafts[-1][1], log=log)


def _sign(client: object, index: int, *, user: str, draft_id: str, log: ClientLog) -> None:
    """Sign ``draft_id`` with text unique to the client; an acknowledged signature goes to ``log.signed``."""
    tag = uuid.uuid4().hex
    signed = Save(user=user, draft_id=draft_id, findings=f"Signed by load test client {index}: lungs clear. [{tag}]",
                  impression=f"No acute disease, signed ({tag}).")
    try:
        # Signed as the reader does after reading the draft's warnings (a seeded test model's drafts have some).
        status = client.predict(draft_id, signed.findings, signed.impression, [], "", None, True,  # type: ignore[attr-defined]
                                api_name="/sign")[0]
    except Exception as err:  # noqa: BLE001
        log.save_refusals.append(f"sign: {type(err).__name__}: {err}")
        return
    if "Signed" in str(status):
        log.signed.append(signed)
    else:
        log.save_refusals.append(f"sign: unexpected status {status!r}")


def query_database(db: Path | str, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` from the SQLite file ``db`` (opened read-only) or the database at the URL ``db``."""
    if isinstance(db, Path):
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(db, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql)).all()]
    finally:
        engine.dispose()


def audit_saves(db: Path | str, saves: list[Save], drafts: list[tuple[str, str]]) -> dict[str, int]:
    """Compare acknowledged saves and drafts with the database (the SQLite file ``db``, or a database URL).

    Returns counts: ``lost`` (an acknowledged save not stored), ``mixed`` (stored with other text, draft or
    user), ``duplicated`` (stored more than once), ``stored_unacknowledged`` (a load-test text stored without an
    acknowledgement) and ``drafts_of_wrong_owner``.
    """
    rows = query_database(db, "SELECT e.draft_id, e.author, e.findings, e.impression, s.owner FROM edit e "
                              "JOIN draft d ON d.id = e.draft_id JOIN study s ON s.id = d.study_id WHERE e.kind = 'edit'")
    owners = dict(query_database(db, "SELECT d.id, s.owner FROM draft d JOIN study s ON s.id = d.study_id"))
    by_text: dict[str, list[tuple[str, str, str, str]]] = {}
    for draft_id, author, findings, impression, owner in rows:
        by_text.setdefault(findings, []).append((draft_id, author, impression, owner))
    lost = mixed = duplicated = 0
    for save in saves:
        stored = by_text.get(save.findings, [])
        expected = (save.draft_id, save.user, save.impression, save.user)
        if not stored:
            lost += 1
        elif any(row != expected for row in stored):
            mixed += 1
        elif len(stored) > 1:
            duplicated += 1
    acknowledged = {s.findings for s in saves}
    unacknowledged = sum(1 for text in by_text if text.startswith("Load test client") and text not in acknowledged)
    wrong_owner = sum(1 for user, draft_id in drafts if owners.get(draft_id) != user)
    return {"lost": lost, "mixed": mixed, "duplicated": duplicated, "stored_unacknowledged": unacknowledged,
            "drafts_of_wrong_owner": wrong_owner}


def audit_mismatches(db: Path | str) -> int:
    """Edits without exactly one audit row (``audit.edit_id``), plus audit rows naming an edit that is not there."""
    unmatched = query_database(db, "SELECT COUNT(*) FROM (SELECT e.id FROM edit e LEFT JOIN audit a ON a.edit_id = e.id "
                                   "GROUP BY e.id HAVING COUNT(a.id) <> 1) AS x")
    orphans = query_database(db, "SELECT COUNT(*) FROM audit a LEFT JOIN edit e ON e.id = a.edit_id "
                                 "WHERE a.edit_id IS NOT NULL AND e.id IS NULL")
    return int(unmatched[0][0]) + int(orphans[0][0])  # type: ignore[call-overload]


def read_back_signed(apps: list[AppProcess], creds: dict[str, str], signed: list[Save]) -> dict[str, int]:
    """Export every signing user's reports from every replica and compare.

    Returns ``signed_missing`` (an acknowledged signature whose text is not in the user's export of some
    replica) and ``exports_differing`` (users whose ``records.jsonl`` is not byte-identical on every replica).
    """
    from gradio_client import Client

    missing = differing = 0
    for user in sorted({s.user for s in signed}):
        exports = []
        for app in apps:
            path, _ = Client(app.url, auth=(user, creds[user]), verbose=False).predict(
                None, None, api_name="/export_corrections")
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("/records.jsonl"))
                exports.append(zf.read(name))
        differing += len(set(exports)) > 1
        for export in exports:
            records = {}
            for line in io.TextIOWrapper(io.BytesIO(export), encoding="utf-8"):
                record = json.loads(line)
                records[record["correction"]["draft_id"]] = record
            for s in (s for s in signed if s.user == user):
                record = records.get(s.draft_id)
                tag = s.findings.rsplit("[", 1)[-1]  # the findings as exported are the training text of them
                if record is None or record["impression"] != s.impression or tag not in record["findings"]:
                    missing += 1
    return {"signed_missing": missing, "exports_differing": differing}


@contextlib.contextmanager
def start_replicas(work_dir: Path, count: int, *, database_url: str | None, **kwargs: object) -> Iterator[list[AppProcess]]:
    """``count`` app processes (``work_dir/server`` alone, else ``server-0`` ...), stopped on exit."""
    if count > 1 and not database_url:
        raise ValueError(f"{count} replicas need a server database (--database-url): SQLite serves one process")
    with contextlib.ExitStack() as stack:
        apps = []
        for i in range(count):
            folder = work_dir / ("server" if count == 1 else f"server-{i}")
            app = start_app(folder, database_url=database_url, replica_id=f"replica-{i}", **kwargs)  # type: ignore[arg-type]
            apps.append(stack.enter_context(app))
        yield apps


def run_load(work_dir: Path, *, clients: int = 16, users: int = 4, iterations: int = 3, saves: int = 4,
             queue_size: int = 8, max_new_tokens: int = 32, max_batch: int | None = None,
             batch_window_ms: int | None = None, timeout_s: float = 900.0, replicas: int = 1, database_url: str | None = None) -> LoadReport:
    """Serve the app under ``work_dir``, run the clients, stop the app and audit the database.

    ``max_batch`` / ``batch_window_ms``: ``ECHO_MAX_BATCH`` / ``ECHO_BATCH_WINDOW_MS`` of the app (``None`` = the
    app's default). ``replicas`` app processes
    share the database at ``database_url`` (``None``: one process on its own SQLite file); with more than
    one, each client signs its last draft and the signed reports are read back from every replica.
    """
    from echo_model.imaging.synthetic import phantom_cxr

    creds = credentials(min(users, clients))
    names = list(creds)
    images = []
    for i in range(clients):
        path = work_dir / "inputs" / f"view-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        phantom_cxr((256, 256), seed=100 + i).save(path)
        images.append(path)
    logs = [ClientLog() for _ in range(clients)]
    extra_env = {name: str(value) for name, value in (("ECHO_MAX_BATCH", max_batch),
                                                      ("ECHO_BATCH_WINDOW_MS", batch_window_ms)) if value is not None}
    # Drafts of 32 tokens stop mid-sentence: with the embedded family's default fallback each would be drafted
    # twice more, so the test measures the drafting it always measured, one draft per request.
    extra_env["ECHO_FALLBACK"] = "none"
    if database_url:
        upgrade_database(database_url, work_dir=work_dir)  # before any replica starts, as an operator does
    with start_replicas(work_dir, replicas, database_url=database_url, auth=auth_value(creds),
                        queue_size=queue_size, extra_env=extra_env) as apps:
        from gradio_client import Client, handle_file

        for app in apps:  # loads the model in every replica: not timed
            warm = Client(app.url, auth=(names[0], creds[names[0]]), verbose=False)
            warm.predict([handle_file(str(images[0]))], max_new_tokens=max_new_tokens, api_name="/generate")
        start = threading.Barrier(clients)
        deadline = time.monotonic() + timeout_s
        threads = [
            threading.Thread(target=_client, args=(i,), daemon=True, kwargs={
                "url": apps[i % replicas].url, "user": names[i % len(names)], "password": creds[names[i % len(names)]],
                "image": images[i], "iterations": iterations, "saves": saves, "max_new_tokens": max_new_tokens,
                "start": start, "deadline": deadline, "log": logs[i], "sign": replicas > 1})
            for i in range(clients)
        ]
        t0 = time.perf_counter()
        cpu0 = (_cpu_seconds_of(apps), _cpu_seconds())
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(1.0, deadline - time.monotonic() + 30))
        wall = time.perf_counter() - t0
        cpu1 = (_cpu_seconds_of(apps), _cpu_seconds())
        app_cpu, clients_cpu = (round(b - a, 2) if a is not None and b is not None else None for a, b in zip(cpu0, cpu1))
        every = ClientLog()
        for log in logs:
            for name in ("generate_s", "save_s", "busy_s", "save_refusals", "generate_errors", "drafts", "saves",
                         "phases", "signed"):
                getattr(every, name).extend(getattr(log, name))
            every.busy_messages |= log.busy_messages
        read_back = read_back_signed(apps, creds, every.signed) if every.signed else {}
        db: Path | str = database_url or apps[0].data_dir / "echo.sqlite"
    audit = audit_saves(db, every.saves, every.drafts)
    return LoadReport(
        clients=clients, users=len(names), iterations=iterations, saves_per_iteration=saves, queue_size=queue_size,
        max_new_tokens=max_new_tokens, wall_s=round(wall, 2), drafts=len(every.drafts),
        generate_p50_s=_percentile(every.generate_s, 50), generate_p95_s=_percentile(every.generate_s, 95),
        save_p50_s=_percentile(every.save_s, 50), save_p95_s=_percentile(every.save_s, 95),
        busy_refusals=len(every.busy_s), busy_p95_s=_percentile(every.busy_s, 95),
        busy_max_s=round(max(every.busy_s), 4) if every.busy_s else None,
        busy_messages=sorted(every.busy_messages), generate_errors=every.generate_errors,
        saves_acknowledged=len(every.saves), saves_refused=len(every.save_refusals),
        save_refusal_messages=sorted(set(every.save_refusals)), **audit,
        machine=f"{platform.machine()} {platform.processor() or platform.system()}, "
                f"{_cpu_count()} logical CPUs, Python {platform.python_version()}",
        throughput_per_s=round(len(every.drafts) / wall, 3) if wall > 0 else 0.0,
        app_cpu_s=app_cpu, clients_cpu_s=clients_cpu, replicas=replicas,
        database="sqlite" if database_url is None else database_url.split(":", 1)[0].split("+", 1)[0],
        signed=len(every.signed), **read_back, audit_mismatches=audit_mismatches(db),
        breakdown_p50_s={name: _percentile([p[name] for p in every.phases if name in p], 50)
                         for name in (*PHASES, "reply", "batch rows")},
        latencies={"generate_s": [round(v, 4) for v in every.generate_s],
                   "save_s": [round(v, 4) for v in every.save_s],
                   "busy_s": [round(v, 4) for v in every.busy_s]},
    )


def _cpu_seconds_of(apps: list[AppProcess]) -> float | None:
    """CPU seconds of every app process together (None where /proc does not tell)."""
    seconds = [_cpu_seconds(app.process.pid) for app in apps]
    return None if any(s is None for s in seconds) else sum(s for s in seconds if s is not None)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plot_latencies(report: LoadReport, path: Path) -> None:
    """Empirical CDF of draft, save and busy-refusal latencies (log time axis), p95 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    series = [("generate_s", "/generate (accepted)"), ("save_s", "/save_edit"), ("busy_s", "/generate refused busy")]
    for key, label in series:
        values = np.sort(np.asarray(report.latencies.get(key, []), dtype=float))
        if values.size == 0:
            continue
        ax.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                label=f"{label}: n={values.size}, p50 {np.percentile(values, 50):.3f} s, "
                      f"p95 {np.percentile(values, 95):.3f} s")
    ax.set_xscale("log")
    ax.set_xlabel("latency seen by the client (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{report.clients} clients, {report.users} users, drafting line {report.queue_size}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: LoadReport) -> str:
    """The figures as printed lines."""
    return "\n".join(line for line in [
        (f"{report.replicas} replica(s) on {report.database}; "
         f"clients {report.clients} ({report.users} users), {report.iterations} drafts x "
         f"{report.saves_per_iteration} saves each, drafting line {report.queue_size}, wall {report.wall_s:.1f} s"),
        (f"/generate accepted: {report.drafts}, p50 {_s(report.generate_p50_s)}, p95 {_s(report.generate_p95_s)}; "
         f"throughput {report.throughput_per_s:.2f} drafts/s"),
        (f"CPU while the clients ran: app {report.app_cpu_s} s, load-test clients {report.clients_cpu_s} s "
         f"(wall {report.wall_s:.1f} s, {_cpu_count()} CPUs)"),
        "per draft, median: " + ", ".join(
            f"{name} {'-' if value is None else (f'{value:g}' if name == 'batch rows' else f'{value:.3f} s')}"
            for name, value in report.breakdown_p50_s.items()),
        (f"/generate refused busy: {report.busy_refusals}, p95 {_s(report.busy_p95_s)}, max {_s(report.busy_max_s)}; "
         f"message: {report.busy_messages[0] if report.busy_messages else '-'}"),
        (f"/save_edit acknowledged: {report.saves_acknowledged}, refused {report.saves_refused}, "
         f"p50 {_s(report.save_p50_s)}, p95 {_s(report.save_p95_s)}"),
        (f"database: lost {report.lost}, mixed {report.mixed}, duplicated {report.duplicated}, stored unacknowledged "
         f"{report.stored_unacknowledged}, drafts of the wrong owner {report.drafts_of_wrong_owner}, "
         f"edits without exactly one audit row {report.audit_mismatches}; "
         f"other draft errors {len(report.generate_errors)}"),
        (f"signed {report.signed}, read back from every replica: signed missing {report.signed_missing}, "
         f"exports differing {report.exports_differing}") if report.replicas > 1 else "",
        "RESULT: " + ("PASS" if report.ok else "FAIL"),
    ] if line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--users", type=int, default=4, help="logins the clients are spread over")
    parser.add_argument("--iterations", type=int, default=3, help="drafts per client")
    parser.add_argument("--saves", type=int, default=4, help="saves per draft")
    parser.add_argument("--queue-size", type=int, default=8, help="ECHO_QUEUE_SIZE: drafts allowed to wait")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, help="ECHO_MAX_BATCH: drafts decoded together (default: the app's)")
    parser.add_argument("--batch-window-ms", type=int,
                        help="ECHO_BATCH_WINDOW_MS: how long a free device waits for drafts to share a batch "
                             "(default: the app's)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "reliability")
    parser.add_argument("--work-dir", type=Path, help="keep the server's files here (default: a temporary folder)")
    parser.add_argument("--replicas", type=int, default=1, help="app processes sharing --database-url")
    parser.add_argument("--database-url", help="ECHO_DATABASE_URL of every replica (default: one SQLite file)")
    args = parser.parse_args(argv)
    if args.replicas > 1 and not args.database_url:
        parser.error(f"--replicas {args.replicas} needs --database-url (a server database): SQLite serves one process")
    for name in ("clients", "users", "iterations", "saves", "queue_size", "max_new_tokens", "max_batch", "replicas"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_window_ms is not None and args.batch_window_ms < 0:
        parser.error(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    with tempfile.TemporaryDirectory(prefix="echo-load-") as tmp:
        report = run_load(args.work_dir or Path(tmp), clients=args.clients, users=args.users,
                          iterations=args.iterations, saves=args.saves, queue_size=args.queue_size,
                          max_new_tokens=args.max_new_tokens, max_batch=args.max_batch,
                          batch_window_ms=args.batch_window_ms, replicas=args.replicas, database_url=args.database_url)
    print(summary(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(asdict(report), indent=1) + "\n", encoding="utf-8")
    plot_latencies(report, args.out / "load.png")
    print(f"wrote {args.out / 'load.json'} and {args.out / 'load.png'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run the DICOM loader over a peer's corpus: every file shipped with pydicom and with pydicom-data.

Usage::

    python scripts/dicom_corpus.py [--workers 2] [--timeout 30] [--max-memory-mib 3072] [--limit N]
                                   [--json results/reliability/dicom_corpus.json]

pydicom's own test files (``pydicom.data.get_testdata_files``, ``get_charset_files``,
``get_palette_files``) and the files of the installed ``pydicom-data`` package are each passed to
``echo_model.imaging.load_image``. The contract under test: a file either loads or raises one of
our documented :class:`~echo_model.imaging.ImageInputError` subclasses; it never raises anything
else, never hangs and never takes the process down. Files that pydicom can only download are
not downloaded: they are listed and counted as "not available offline".

Why worker processes: a decoder plugin can segfault or loop, which would kill or freeze an
in-process loop and hide every later file. Each of ``--workers`` long-lived worker processes loads
one file at a time under an address-space limit; the parent gives each file ``--timeout``
seconds, and a worker that overruns is killed (counted ``timeout``) or that dies (counted
``crash``) is replaced, so the run always covers every file. The JSON names files by source and
path inside that source's data folder, never by an absolute path.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = Path("results") / "reliability" / "dicom_corpus.json"
#: Outcomes other than these two break the loader's contract.
CONTRACT_OUTCOMES = ("loaded", "refused")
OUTCOMES = ("loaded", "refused", "other_exception", "timeout", "crash")
#: Address-space limit of a worker: far above what a 50-megapixel frame needs, far below the machine's memory.
DEFAULT_MAX_MEMORY_MIB = 3072


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus: where it comes from, and its path inside that source's data folder."""

    source: str
    relative: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.source}:{self.relative}"


@dataclass(frozen=True)
class FileOutcome:
    """What loading one file gave. ``error`` is the exception class; ``message`` never holds a directory."""

    file: str
    outcome: str
    error: str | None = None
    message: str | None = None
    seconds: float = 0.0


# ------------------------------------------------------------------------------------- the corpus


def pydicom_data_folder() -> Path | None:
    """The data folder of the installed ``pydicom-data`` distribution (import name ``data_store``)."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "data"
    return folder if folder.is_dir() else None


def corpus_files() -> tuple[list[CorpusFile], list[str]]:
    """Every local file of both corpora, and the names pydicom lists that exist only online.

    ``get_testdata_files`` also returns folders (the DICOMDIR trees) and the ``pydicom-data`` files;
    folders are dropped and each file is attributed to the data folder it lives in.
    """
    from pydicom.data import get_charset_files, get_palette_files, get_testdata_files
    from pydicom.data.data_manager import DATA_ROOT
    from pydicom.data.download import get_url_map

    roots: dict[str, Path] = {"pydicom": Path(DATA_ROOT).resolve()}
    peer = pydicom_data_folder()
    if peer is not None:
        roots["pydicom-data"] = peer.resolve()
    found: dict[Path, CorpusFile] = {}
    listed = [*get_testdata_files(), *get_charset_files(), *get_palette_files()]
    if peer is not None:
        listed += [str(p) for p in peer.rglob("*")]
    for raw in listed:
        path = Path(raw).resolve()
        if not path.is_file() or path.suffix == ".py" or "__pycache__" in path.parts:
            continue
        source, root = next(((s, r) for s, r in roots.items() if path.is_relative_to(r)), ("other", path.parent))
        found.setdefault(path, CorpusFile(source=source, relative=path.relative_to(root).as_posix(), path=path))
    files = sorted(found.values(), key=lambda f: f.label)
    local_names = {f.path.name for f in files}
    offline_missing = sorted(name for name in get_url_map() if name not in local_names)
    return files, offline_missing


# ------------------------------------------------------------------------------------- the worker


def worker_main(max_memory_mib: int) -> int:
    """Answer ``{"path": ...}`` lines on stdin with one JSON outcome line each, until stdin closes."""
    import logging
    import resource
    import warnings

    if max_memory_mib > 0:
        limit = max_memory_mib * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")  # pydicom warns about every oddity of its own test files
    logging.disable(logging.CRITICAL)
    from echo_model.imaging import ImageInputError, load_image

    for line in sys.stdin:
        path = Path(json.loads(line)["path"])
        start = time.perf_counter()
        try:
            load_image(path)
            answer: dict[str, object] = {"outcome": "loaded"}
        except ImageInputError as err:
            answer = {"outcome": "refused", "error": type(err).__name__, "message": str(err)}
        except Exception as err:  # noqa: BLE001  (the point of the exercise: anything else is a finding)
            message = str(err).replace(str(path.parent), "<corpus>")
            answer = {"outcome": "other_exception", "error": type(err).__name__, "message": message[:300]}
        answer["seconds"] = round(time.perf_counter() - start, 4)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


class WorkerTimeout(Exception):
    """The worker did not answer within the per-file time bound."""


class WorkerCrash(Exception):
    """The worker process died while loading a file."""


class Worker:
    """One long-lived worker process; :meth:`ask` sends a path and waits at most ``timeout_s`` for its answer."""

    def __init__(self, command: Sequence[str]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1, cwd=ROOT, env=env,
        )

    def ask(self, path: Path, timeout_s: float) -> dict[str, object]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps({"path": str(path)}) + "\n")
            stdin.flush()
        except BrokenPipeError:
            raise WorkerCrash(self._exit_status()) from None
        ready, _, _ = select.select([stdout], [], [], timeout_s)
        if not ready:
            raise WorkerTimeout(f"no answer within {timeout_s:g} s")
        line = stdout.readline()
        if not line:
            raise WorkerCrash(self._exit_status())
        return dict(json.loads(line))

    def _exit_status(self) -> str:
        code = self.process.wait(timeout=10)
        return f"worker exited with status {code}" + (f" (signal {-code})" if code < 0 else "")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def default_worker_command(max_memory_mib: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", "--max-memory-mib", str(max_memory_mib)]


def run_corpus(
    files: Sequence[CorpusFile],
    *,
    workers: int = 2,
    timeout_s: float = 30.0,
    worker_command: Sequence[str] | None = None,
    on_result: Callable[[FileOutcome], None] | None = None,
) -> list[FileOutcome]:
    """Load every file in a worker; return one :class:`FileOutcome` per file, in the order of ``files``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    command = list(worker_command or default_worker_command(DEFAULT_MAX_MEMORY_MIB))
    todo: queue.Queue[int] = queue.Queue()
    for index in range(len(files)):
        todo.put(index)
    results: list[FileOutcome | None] = [None] * len(files)

    def drain() -> None:
        worker = Worker(command)
        try:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                item = files[index]
                start = time.perf_counter()
                try:
                    answer = worker.ask(item.path, timeout_s)
                    outcome = FileOutcome(file=item.label, outcome=str(answer["outcome"]),
                                          error=_optional_text(answer.get("error")),
                                          message=_optional_text(answer.get("message")),
                                          seconds=float(str(answer["seconds"])))
                except (WorkerTimeout, WorkerCrash) as failure:
                    kind = "timeout" if isinstance(failure, WorkerTimeout) else "crash"
                    outcome = FileOutcome(file=item.label, outcome=kind, message=str(failure),
                                          seconds=round(time.perf_counter() - start, 4))
                    worker.close()
                    worker = Worker(command)
                results[index] = outcome
                if on_result is not None:
                    on_result(outcome)
        finally:
            worker.close()

    threads = [threading.Thread(target=drain, daemon=True) for _ in range(min(workers, max(len(files), 1)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missing = [files[i].label for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"{len(missing)} files got no outcome, e.g. {missing[0]!r}")
    return [r for r in results if r is not None]


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


# ------------------------------------------------------------------------------------- the report


def summarise(outcomes: Sequence[FileOutcome], offline_missing: Sequence[str]) -> dict[str, Any]:
    """Counts overall and per source, refusals by error class, and the names pydicom could only download."""
    by_source: dict[str, Counter[str]] = {}
    for item in outcomes:
        by_source.setdefault(item.file.split(":", 1)[0], Counter())[item.outcome] += 1
    total = Counter(item.outcome for item in outcomes)
    return {
        "files": len(outcomes),
        "counts": {name: total.get(name, 0) for name in OUTCOMES},
        "refused_by_error": dict(sorted(Counter(i.error for i in outcomes if i.outcome == "refused").items())),
        "by_source": {src: {name: c.get(name, 0) for name in OUTCOMES} for src, c in sorted(by_source.items())},
        "not_available_offline": len(offline_missing),
        "slowest_seconds": max((i.seconds for i in outcomes if i.outcome in CONTRACT_OUTCOMES), default=0.0),
    }


def markdown_tables(summary: dict[str, Any]) -> str:
    """The counts as two Markdown tables (per source, and refusals by error class)."""
    by_source: dict[str, dict[str, int]] = summary["by_source"]
    counts: dict[str, int] = summary["counts"]
    lines = ["| source | files | loaded | refused (our error) | other exception | timeout | crash |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = [*by_source.items(), ("**all**", counts)]
    for source, c in rows:
        lines.append(f"| {source} | {sum(c.values())} | " + " | ".join(str(c[name]) for name in OUTCOMES) + " |")
    lines += ["", "| refused with | files |", "| --- | --- |"]
    lines += [f"| `{error}` | {n} |" for error, n in summary["refused_by_error"].items()]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Versions of the corpora and of the decoders that decide what loads."""
    out: dict[str, str] = {}
    for dist in ("pydicom", "pydicom-data", "pillow", "numpy", "pylibjpeg", "python-gdcm"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per file (default 30)")
    parser.add_argument("--max-memory-mib", type=int, default=DEFAULT_MAX_MEMORY_MIB,
                        help=f"address-space limit of each worker, MiB (0: none; default {DEFAULT_MAX_MEMORY_MIB})")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files (a quick check)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write (default {DEFAULT_JSON})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.max_memory_mib)
    files, offline_missing = corpus_files()
    if args.limit is not None:
        files = files[: max(args.limit, 0)]
    start = time.perf_counter()
    outcomes = run_corpus(files, workers=args.workers, timeout_s=args.timeout,
                          worker_command=default_worker_command(args.max_memory_mib))
    summary = summarise(outcomes, offline_missing)
    print(markdown_tables(summary))
    print(f"\nnot available offline (listed by pydicom, download only, not fetched): {len(offline_missing)}"
          + (f" ({', '.join(offline_missing)})" if offline_missing else ""))
    broken = [o for o in outcomes if o.outcome not in CONTRACT_OUTCOMES]
    for item in broken:
        print(f"CONTRACT BROKEN {item.outcome}: {item.file}: {item.error or ''} {item.message or ''}")
    print(f"slowest file {summary['slowest_seconds']:.2f} s; whole run {time.perf_counter() - start:.1f} s "
          f"with {args.workers} workers")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"summary": summary, "timeout_s": args.timeout, "versions": versions(),
              "not_available_offline": offline_missing, "files": [asdict(o) for o in outcomes]}
    args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure ``echo-report --batch`` on real radiographs: studies/s at batch 8 vs batch 1, report parity, model calls,
and resume after ``kill -9`` (docs/speed.md, "Batch").

    python scripts/batch_bench.py DATA/covid_cxr_notes [--studies 64] [--repeats 3] [--json results/batch.json]

The studies are ``--studies`` - 1 covid_cxr_notes radiographs (test split first, then train; one image per
patient, so every study is distinct) plus pydicom's ``RG1_UNCR.dcm`` (a 16-bit CR chest film), given as files
with ``--one-per-file``. Every timed run goes from the files to a fresh JSONL (discovery, decoding, encoding,
drafting, writing) with the embedded student already loaded; nothing is cached between runs. The two batch
sizes alternate (order flipped each repeat) and the medians are printed. A forward hook on the Hugging Face
model counts the model calls. Last, the CLI drafts the same studies at batch 8 in a subprocess that is killed
with SIGKILL mid-run, is resumed, and the file is checked for lost and doubled studies.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pick_files(data: Path, n: int) -> list[str]:
    """``n`` - 1 covid_cxr_notes images of distinct patients (test, then train) and RG1_UNCR.dcm."""
    from pydicom.data import get_testdata_file

    rows = [json.loads(line) for line in (data / "records.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda r: ({"test": 0, "train": 1}.get(r.get("split"), 2), r["id"]))
    files, patients = [], set()
    for row in rows:
        if row.get("split") not in ("test", "train") or row["patientid"] in patients:
            continue
        patients.add(row["patientid"])
        files.append(str(data / "images" / row["image"]))
        if len(files) == n - 1:
            break
    if len(files) < n - 1:
        raise SystemExit(f"{data}: only {len(files)} patients with test/train images, need {n - 1}")
    return [*files, get_testdata_file("RG1_UNCR.dcm", download=False)]


def reports(path: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r["draft"]["report"] if "draft" in r else f"ERROR {r['error']}" for r in rows}


def timed_runs(files: list[str], work: Path, *, sizes: tuple[int, ...], repeats: int, tokens: int,
               quantize: str = "none") -> dict:
    """Interleaved in-process runs; per batch size the wall times, phase times, model calls and reports."""
    from echo_model.batch import BatchOptions, run_batch
    from echo_model.drafting import Drafter
    from echo_model.sampling import SamplerConfig

    drafter = Drafter(None, device="cpu", quantize=quantize)
    hf = drafter.checkpoint("echo").model.model
    calls = [0]
    timing = {"began": 0.0, "prefill": 0.0, "decode": 0.0}

    def before(module: object, args: tuple, kwargs: dict) -> None:
        timing["began"] = time.perf_counter()

    def after(module: object, args: tuple, kwargs: dict, output: object) -> None:
        calls[0] += 1
        kind = "prefill" if kwargs.get("pixel_values") is not None else "decode"  # the prefill carries the images
        timing[kind] += time.perf_counter() - timing["began"]

    hf.register_forward_pre_hook(before, with_kwargs=True)
    hf.register_forward_hook(after, with_kwargs=True)
    key = work / "bench.key"
    config = SamplerConfig(max_new_tokens=tokens)
    run_batch(files[:2], out=work / "warmup.jsonl", key_file=key, drafter=drafter, one_per_file=True,
              options=BatchOptions(batch_size=2, config=config))  # first-call costs (allocator, lazy imports)
    out: dict[int, dict] = {b: {"seconds": [], "load": [], "draft": [], "prefill": [], "decode": [], "calls": [], "reports": None}
                         for b in sizes}
    for rep in range(repeats):
        for b in sizes if rep % 2 == 0 else tuple(reversed(sizes)):
            path = work / f"b{b}_r{rep}.jsonl"
            calls[0] = 0
            timing.update(prefill=0.0, decode=0.0)
            start = time.perf_counter()
            run = run_batch(files, out=path, key_file=key, drafter=drafter, one_per_file=True,
                            options=BatchOptions(batch_size=b, config=config))
            wall = time.perf_counter() - start
            got = reports(path)
            if out[b]["reports"] is not None and got != out[b]["reports"]:
                raise SystemExit(f"batch {b}: repeat {rep} drafted other reports than repeat 0")
            out[b].update(reports=got, found=run.found, errors=run.errors)
            out[b]["seconds"].append(wall)
            out[b]["load"].append(run.summary.load_seconds)
            out[b]["draft"].append(run.summary.draft_seconds)
            out[b]["calls"].append(calls[0])
            out[b]["prefill"].append(timing["prefill"])
            out[b]["decode"].append(timing["decode"])
            print(f"  repeat {rep} batch {b}: {wall:.1f} s, {len(files) / wall:.2f} studies/s, {calls[0]} model calls "
                  f"(loading {run.summary.load_seconds:.1f} s in the background thread; drafting "
                  f"{run.summary.draft_seconds:.1f} s, of which prefill forwards {timing['prefill']:.1f} s, decoding "
                  f"forwards {timing['decode']:.1f} s)", flush=True)
            path.unlink()
    # 8 studies: one batch of 8 against the 8 alone.
    first8 = files[:8]
    calls[0] = 0
    run_batch(first8, out=work / "eight.jsonl", key_file=key, drafter=drafter, one_per_file=True,
              options=BatchOptions(batch_size=8, config=config))
    batch8 = calls[0]
    alone = []
    for i, f in enumerate(first8):
        calls[0] = 0
        run_batch([f], out=work / f"alone{i}.jsonl", key_file=key, drafter=drafter, one_per_file=True,
                  options=BatchOptions(batch_size=1, config=config))
        alone.append(calls[0])
    return {"sizes": out, "eight": {"batch8_calls": batch8, "alone_calls": alone}}


def kill_and_resume(files: list[str], work: Path, *, tokens: int, key: Path, expected: dict[str, str],
                    quantize: str = "none") -> dict:
    """The CLI at batch 8, SIGKILL after two batches' rows, then --resume; lost / doubled / differing studies."""
    out = work / "killed.jsonl"
    cmd = [sys.executable, "-m", "echo_model.cli", "--batch", *files, "--one-per-file", "--out", str(out),
           "--key-file", str(key), "--batch-size", "8", "--max-new-tokens", str(tokens), "--device", "cpu",
           "--quantize", quantize, "--fallback", "none"]  # the drafts run_batch made above: no re-drafts
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 16:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = out.read_bytes().count(b"\n")
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    ids = [r["id"] for r in rows]
    got = reports(out)
    return {"rows_at_kill": at_kill, "rows_after_resume": len(rows), "resume_exit": resumed.returncode,
            "lost": len(set(expected) - set(ids)), "doubled": len(ids) - len(set(ids)),
            "differing_reports": sum(1 for k, v in expected.items() if got.get(k) != v)}


def cli_comparison(files: list[str], work: Path, *, base: Path, repeats: int, tokens: int) -> dict:
    """The command line as a user runs it, start-up included: one ``echo-report FILE`` per study from the
    ``base`` checkout (before ``--batch`` existed) against one ``echo-report --batch FILES`` from this one,
    alternating, on the same studies."""
    single = ["-m", "echo_model.cli", "--max-new-tokens", str(tokens), "--device", "cpu", "--json"]
    old_s, new_s = [], []
    for rep in range(repeats):
        for arm in ("old", "new") if rep % 2 == 0 else ("new", "old"):
            start = time.perf_counter()
            if arm == "old":
                for f in files:
                    subprocess.run([sys.executable, *single, f], cwd=base, env=dict(os.environ, PYTHONPATH=str(base)),
                                   check=True, capture_output=True)
            else:
                out = work / f"cli{rep}.jsonl"
                subprocess.run([sys.executable, "-m", "echo_model.cli", "--batch", *files, "--one-per-file", "--out",
                                str(out), "--batch-size", "8", "--max-new-tokens", str(tokens), "--device", "cpu",
                                "--fallback", "none"],  # as the base checkout drafts: no re-drafts
                               cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True, capture_output=True)
            (old_s if arm == "old" else new_s).append(time.perf_counter() - start)
            print(f"  repeat {rep} {arm}: {(old_s if arm == 'old' else new_s)[-1]:.1f} s for {len(files)} studies",
                  flush=True)
    return {"studies": len(files), "old_seconds": old_s, "new_seconds": new_s,
            "speedup": statistics.median(old_s) / statistics.median(new_s)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="the covid_cxr_notes folder (records.jsonl, images/)")
    ap.add_argument("--studies", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see docs/speed.md)")
    ap.add_argument("--quantize", default="none", choices=["none", "int8"],
                    help="weights of the drafting model (int8: dynamic, as echo-report --quantize int8)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--baseline-repo", type=Path, default=None,
                    help="a checkout from before --batch: also time one echo-report per study (start-up included) "
                         "from it against one echo-report --batch, on the first 8 studies")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the subprocess of the kill test
    files = pick_files(args.data, args.studies)
    load = os.getloadavg()[0]
    print(f"{len(files)} studies, torch threads {args.threads}, weights {args.quantize}, load average {load:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        timed = timed_runs(files, work, sizes=(1, 8), repeats=args.repeats, tokens=args.max_new_tokens,
                           quantize=args.quantize)
        sizes = timed["sizes"]
        killed = kill_and_resume(files, work, tokens=args.max_new_tokens, key=work / "bench.key",
                                 expected=sizes[8]["reports"], quantize=args.quantize)
        cli = None
        if args.baseline_repo is not None:
            print("command line, start-up included:")
            cli = cli_comparison(files[:8], work, base=args.baseline_repo, repeats=args.repeats,
                                 tokens=args.max_new_tokens)
    med = {b: statistics.median(v["seconds"]) for b, v in sizes.items()}
    rate = {b: len(files) / s for b, s in med.items()}
    same = sizes[1]["reports"] == sizes[8]["reports"]
    eight = timed["eight"]
    result = {
        "studies": len(files), "drafted": sizes[8]["found"] - sizes[8]["errors"], "threads": args.threads,
        "quantize": args.quantize,
        "load_average_before": load, "load_average_after": os.getloadavg()[0], "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "median_seconds": med, "studies_per_second": rate, "speedup_b8_over_b1": rate[8] / rate[1],
        "median_load_seconds": {b: statistics.median(v["load"]) for b, v in sizes.items()},
        "median_draft_seconds": {b: statistics.median(v["draft"]) for b, v in sizes.items()},
        "median_prefill_seconds": {b: statistics.median(v["prefill"]) for b, v in sizes.items()},
        "median_decode_seconds": {b: statistics.median(v["decode"]) for b, v in sizes.items()},
        "model_calls": {b: v["calls"][0] for b, v in sizes.items()},
        "reports_identical": same, "eight_studies": eight, "kill_9": killed, "command_line": cli,
    }
    print(f"\nstudies/s: batch 1 {rate[1]:.2f}, batch 8 {rate[8]:.2f} -> {result['speedup_b8_over_b1']:.2f}x "
          f"(median of {args.repeats}; wall {med[1]:.1f} s vs {med[8]:.1f} s)")
    for b in (1, 8):
        print(f"batch {b}: loading {result['median_load_seconds'][b]:.2f} s (background thread), drafting "
              f"{result['median_draft_seconds'][b]:.2f} s = prefill forwards {result['median_prefill_seconds'][b]:.2f} s "
              f"+ decoding forwards {result['median_decode_seconds'][b]:.2f} s + sampler; "
              f"{result['model_calls'][b]} model calls")
    print(f"reports identical at batch 1 and 8: {same}")
    print(f"8 studies: {eight['batch8_calls']} model calls at batch 8; alone {eight['alone_calls']} "
          f"(longest {max(eight['alone_calls'])}, sum {sum(eight['alone_calls'])})")
    print(f"kill -9: {killed['rows_at_kill']} rows at the kill, {killed['rows_after_resume']} after --resume "
          f"(exit {killed['resume_exit']}); lost {killed['lost']}, doubled {killed['doubled']}, "
          f"reports differing from the uninterrupted run {killed['differing_reports']}")
    if cli is not None:
        print(f"command line, 8 studies: one echo-report per study (base checkout) "
              f"{statistics.median(cli['old_seconds']):.1f} s, echo-report --batch "
              f"{statistics.median(cli['new_seconds']):.1f} s -> {cli['speedup']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

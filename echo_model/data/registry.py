"""One entry point for training data: :func:`load_dataset` picks the adapter from the folder layout.

Detection, in order (the first row of the JSONL file is parsed to tell the layouts apart):

=========================================================  ============================================
path                                                       adapter
=========================================================  ============================================
a ``.jsonl`` file                                          generic study records (:mod:`.jsonl`)
a folder with ``reports.jsonl`` whose rows have IU fields  IU X-ray (:mod:`.iu_xray`)
a folder with ``records.jsonl`` + ``images/`` whose rows   covid_cxr_notes (:mod:`.covid_notes`)
have ``image``/``clinical_notes``/``license``/``patientid``
a folder with ``records.jsonl`` in the study-record format generic study records
=========================================================  ============================================

Anything else raises :class:`DatasetLayoutError` naming the path and what was looked for.

``python -m echo_model.data.registry PATH [PATH ...]`` prints, for each data set, the studies per
split with and without images and the rows skipped with their reasons.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .records import StudyRecord

from .covid_notes import COVID_IMAGES_DIR, COVID_RECORDS_FILE, looks_like_covid_row, read_covid_cxr_notes
from .dedup import deduplicate, remove_overlap
from .iu_xray import IU_REPORTS_FILE, IU_SPLIT_FIELDS, looks_like_iu_row, read_iu_xray
from .jsonl import EVAL_SPLITS, LoadResult, check_split, read_records_jsonl, split_counts

__all__ = [
    "DATASET_KINDS", "DatasetLayoutError", "detect_layout", "format_dedup", "format_summary", "load_dataset", "main",
    "read_dataset",
]

log = logging.getLogger(__name__)

#: The layouts :func:`detect_layout` can return.
DATASET_KINDS: tuple[str, ...] = ("iu_xray", "covid_cxr_notes", "jsonl")


class DatasetLayoutError(ValueError):
    """The path is not a data set layout this project knows; the message names the path."""


def _first_row(path: Path) -> Any:
    """The first non-blank line of a JSONL file, parsed; ``None`` when empty or not JSON."""
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    return None
    return None


def _is_record_row(row: Any) -> bool:
    return isinstance(row, dict) and "id" in row and ("findings" in row or "impression" in row or "schema" in row)


def detect_layout(path: str | Path) -> tuple[str, Path]:
    """Which adapter reads ``path``: ``(kind, file or folder to pass it)``; see the module docstring.

    Raises:
        DatasetLayoutError: nothing matches (the message says what was found and what was expected).
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data set path {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".jsonl":
            return "jsonl", path
        raise DatasetLayoutError(f"{str(path)!r} is a file but not a .jsonl study-record file")
    reports, records = path / IU_REPORTS_FILE, path / COVID_RECORDS_FILE
    if reports.is_file():
        row = _first_row(reports)
        if looks_like_iu_row(row):
            return "iu_xray", path
    if records.is_file():
        row = _first_row(records)
        if (path / COVID_IMAGES_DIR).is_dir() and looks_like_covid_row(row):
            return "covid_cxr_notes", path
        if _is_record_row(row):
            return "jsonl", records
    present = sorted(p.name for p in path.iterdir())[:10]
    raise DatasetLayoutError(
        f"{str(path)!r} is not a known data set layout: expected a .jsonl study-record file, a folder with "
        f"{IU_REPORTS_FILE} in the IU X-ray format, or a folder with {COVID_RECORDS_FILE} (study records, or "
        f"covid_cxr_notes rows next to {COVID_IMAGES_DIR}/); found {present or 'an empty folder'}"
    )


def _resolve(path_or_name: str | Path, data_root: str | Path | None) -> Path:
    path = Path(path_or_name)
    if path.exists() or data_root is None:
        return path
    candidate = Path(data_root) / str(path_or_name)
    if not candidate.exists():
        raise FileNotFoundError(f"data set {str(path_or_name)!r} is neither a path nor a folder under {str(data_root)!r}")
    return candidate


def read_dataset(
    path_or_name: str | Path,
    *,
    split: str | None = None,
    images_dir: str | Path | None = None,
    split_field: str | None = None,
    data_root: str | Path | None = None,
    normalize: bool = True,
) -> LoadResult:
    """Read a data set, choosing the adapter from the layout (module docstring); the records and the adapter's
    :class:`~.jsonl.LoadReport`.

    Args:
        path_or_name: a ``.jsonl`` file or a data set folder; or a folder name under ``data_root``.
        split: keep only ``"train"``, ``"val"`` or ``"test"``; ``None`` keeps every study.
        images_dir: IU X-ray only: the user's copy of the IU images (otherwise text-only studies).
        split_field: IU X-ray only: ``"split"`` (default) or ``"r2gen_split"``.
        data_root: where to look up a bare name such as ``"iu_xray"`` (no default: data paths are
            always given by the caller).
        normalize: IU X-ray and covid_cxr_notes: rewrite reports in the normalized form ECHO trains on
            (method.md §3.5), the source text kept in ``raw_report``. Study-record JSONL files (the app's
            correction export, user-prepared records) are never normalized: they carry clinicians' text
            as written, whatever this flag says.

    Raises:
        DatasetLayoutError: the path exists but is no known layout.
        FileNotFoundError: the path does not exist.
        RecordFileError: a malformed row (names file, line, record and field).
        ValueError: an option the detected adapter does not take, or a bad split name.
    """
    check_split(split)
    kind, target = detect_layout(_resolve(path_or_name, data_root))
    if kind != "iu_xray":
        if images_dir is not None:
            raise ValueError(f"images_dir is only used by the IU X-ray adapter; {str(target)!r} is read as {kind}")
        if split_field is not None:
            raise ValueError(f"split_field is only used by the IU X-ray adapter; {str(target)!r} is read as {kind}")
    if kind == "iu_xray":
        return read_iu_xray(
            target, images_dir=images_dir, split=split, split_field=split_field or "split", normalize=normalize
        )
    if kind == "covid_cxr_notes":
        return read_covid_cxr_notes(target, split=split, normalize=normalize)
    return read_records_jsonl(target, split=split)  # record files: clinician text as written, never normalized


def load_dataset(path_or_name: str | Path, **options: Any) -> list[StudyRecord]:
    """Load a data set as study records: :func:`read_dataset` (same arguments and errors) without the report."""
    return read_dataset(path_or_name, **options).records


def format_summary(result: LoadResult) -> str:
    """A human-readable table of one data set: per split with/without images, and skipped rows."""
    rep = result.report
    lines = [f"== {rep.source}: {rep.path}", f"rows read: {rep.rows}; studies kept: {rep.kept}"]
    if rep.filtered_by_split:
        lines.append(f"not in the requested split: {rep.filtered_by_split}")
    lines.append(f"{'split':<6} {'studies':>8} {'with images':>12} {'text-only':>10} {'images':>7}")
    counts = split_counts(result.records)
    for name, row in counts.items():
        total = row["with_images"] + row["text_only"]
        lines.append(f"{name:<6} {total:>8} {row['with_images']:>12} {row['text_only']:>10} {row['images']:>7}")
    for reason, n in sorted(rep.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"skipped: {n:>5}  {reason}")
    if rep.images_found or rep.images_missing:
        lines.append(f"image files: {rep.images_found} found, {rep.images_missing} not found (dropped)")
    if rep.studies_without_found_image:
        lines.append(f"studies left text-only because none of their images was found: {rep.studies_without_found_image}")
    for note in rep.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_dedup(records: Sequence[StudyRecord], *, hash_images: bool) -> str:
    """Within-list duplicates and train/eval overlap of one data set, for the summary command."""
    kept, within = deduplicate(records, hash_images=hash_images)
    train = [r for r in kept if r.split == "train"]
    evaluation = [r for r in kept if r.split in EVAL_SPLITS]
    _, both = remove_overlap(train, evaluation, hash_images=hash_images)
    _, images_only = remove_overlap(train, evaluation, by_text=False, hash_images=hash_images)
    return "\n".join([
        f"dedup within the data set: {within.duplicates_within} identical studies removed",
        (f"train vs val+test ({len(train)} vs {len(evaluation)}): removed {both.overlap_image} by image, "
         f"{both.overlap_text} by report text; images only: {images_only.overlap_image} removed"),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m echo_model.data.registry PATH [PATH ...]``: print what each adapter makes of each path."""
    parser = argparse.ArgumentParser(
        prog="python -m echo_model.data.registry", description="Summarise training data sets as ECHO study records."
    )
    parser.add_argument("paths", nargs="+", help="data set folders or .jsonl files")
    parser.add_argument("--images-dir", help="IU X-ray only: folder with the user's IU images")
    parser.add_argument("--split-field", choices=IU_SPLIT_FIELDS, help="IU X-ray only: which split field to use")
    parser.add_argument("--dedup", action="store_true", help="also count duplicates and train/val+test overlap")
    parser.add_argument("--no-image-hash", action="store_true", help="with --dedup: compare image paths, not pixels")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="normalize IU X-ray / covid_cxr_notes reports (the ECHO paper, §3.5; default on)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log adapter details")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    status = 0
    for path in args.paths:
        try:
            kind, _ = detect_layout(path)
            result = read_dataset(
                path,
                images_dir=args.images_dir if kind == "iu_xray" else None,
                split_field=args.split_field if kind == "iu_xray" else None,
                normalize=args.normalize,
            )
        except (OSError, ValueError) as err:
            print(f"== {path}\nerror: {err}", file=sys.stderr)
            status = 1
            continue
        print(format_summary(result))
        if args.dedup:
            print(format_dedup(result.records, hash_images=not args.no_image_hash))
        print()
    return status


if __name__ == "__main__":
    raise SystemExit(main())

"""IU X-ray (Open-i, Indiana University) adapter: ``reports.jsonl`` rows to :class:`StudyRecord`.

The input folder holds ``reports.jsonl``, one study per line, with the collection's own fields
(``id``, ``images``, ``views``, ``findings``, ``impression``, ``indication``, ``comparison``,
``mesh_major``, ``split``, ``r2gen_split``, ``r2gen_id``, ``license_url``, ...). The images are
*not* part of that folder; a user who has them passes ``images_dir``.

Rules (also in ``docs/data.md``):

* text: whitespace collapsed; then, by default (``normalize=True``), the report is normalized
  (:mod:`.normalize`, method.md §3.5: one statement per anatomical region in a fixed order, the
  ``XXXX`` de-identification masks removed) and the source text is kept in ``raw_report``. With
  ``normalize=False`` the text is only whitespace-cleaned and ``XXXX`` is kept verbatim;
* a study whose findings and impression are both empty is skipped and counted;
* ``indication`` is always carried (``""`` becomes ``None``). Without images it is the only
  study-specific input: without it every image-less study would have the same prompt;
* ``comparison``, ``mesh_*`` and captions are not used;
* split: the ``split`` field by default (hash of the study id, 70/10/20), or ``r2gen_split``
  (the literature's R2Gen split; studies outside it get ``split=None``);
* images: Open-i ``NLMCXR_png`` names flat in ``images_dir`` (``CXR1_1_IM-0001-3001.png``), the
  Kaggle names (``1_IM-0001-3001.dcm.png``), or the R2Gen layout
  (``[images/]<r2gen_id>/0.png, 1.png``). Images that are not found are dropped and counted.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from .jsonl import (
    LoadReport,
    LoadResult,
    absolute_path,
    check_split,
    clean_text,
    parse_row,
    raw_report_text,
    read_rows,
)
from .normalize import normalize_sections
from .records import ImageRef, RecordError, StudyRecord

__all__ = [
    "IU_LICENCE",
    "IU_REPORTS_FILE",
    "IU_SOURCE",
    "IU_SPLIT_FIELDS",
    "candidate_image_paths",
    "kaggle_name",
    "load_iu_xray",
    "looks_like_iu_row",
    "map_iu_view",
    "r2gen_folder",
    "read_iu_xray",
]

log = logging.getLogger(__name__)

IU_SOURCE = "iu_xray"
IU_LICENCE = "CC BY-NC-ND 4.0"
IU_REPORTS_FILE = "reports.jsonl"
#: Fields that may carry the split; ``split`` is the data set's fixed hash split.
IU_SPLIT_FIELDS: tuple[str, ...] = ("split", "r2gen_split")
#: Fields a row must have to be recognised as IU (used by the registry's layout detection).
IU_REQUIRED_FIELDS: frozenset[str] = frozenset({"id", "images", "views", "findings", "impression", "indication"})

_VIEW_MAP: dict[str, str] = {
    "frontal": "frontal", "lateral": "lateral", "pa": "pa", "ap": "ap",
    "ll": "lateral", "lat": "lateral", "rl": "lateral", "l": "lateral",
}
_OPENI_NAME = re.compile(r"^CXR(?P<n>\d+)(?:_\d+)?_(?P<rest>IM-.+)\.png$")


def looks_like_iu_row(row: Any) -> bool:
    """Whether a parsed JSON row has the IU field set (``id``, ``images``, ``views``, sections, ``indication``)."""
    return isinstance(row, dict) and IU_REQUIRED_FIELDS <= set(row)


def map_iu_view(value: Any) -> str:
    """An IU view label (``frontal``/``lateral``/``null``, or a DICOM code) in our :data:`VIEWS`."""
    if not isinstance(value, str):
        return "unknown"
    return _VIEW_MAP.get(value.strip().lower(), "unknown")


def r2gen_folder(image_names: list[str]) -> str | None:
    """The R2Gen folder name of a study: its first image name without ``.png`` and the last ``-part``.

    This reproduces every ``r2gen_id`` of the data set (checked on all 2,955 studies that have one),
    so studies outside the R2Gen split can be found in a layout someone built the same way.
    """
    if not image_names:
        return None
    stem = image_names[0].removesuffix(".png")
    return stem.rsplit("-", 1)[0] if "-" in stem else None


def kaggle_name(openi_name: str) -> str | None:
    """The Kaggle copy's name for an Open-i file: drop ``CXR`` and the ``_1`` of ``CXR1_1``; add ``.dcm``."""
    match = _OPENI_NAME.match(openi_name)
    return f"{match['n']}_{match['rest'].removesuffix('.png')}.dcm.png" if match else None


def candidate_image_paths(images_dir: Path, names: list[str], index: int, *, folder: str | None) -> list[Path]:
    """Where image ``index`` of a study may be, in the order tried.

    Why several: users get IU images from Open-i (flat ``NLMCXR_png``), Kaggle, or R2Gen-based repos
    (``images/<r2gen_id>/<i>.png``); they should not have to rename anything.
    """
    name = names[index]
    paths = [images_dir / name]
    alt = kaggle_name(name)
    if alt:
        paths.append(images_dir / alt)
    if folder:
        paths += [images_dir / folder / f"{index}.png", images_dir / "images" / folder / f"{index}.png"]
    return paths


def _str_field(row: dict[str, Any], name: str, rid: str, line: int, *, required: bool = True) -> str:
    value = row.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RecordError(rid, name, f"must be a string, got {type(value).__name__}", line=line)
    return value


def _list_field(row: dict[str, Any], name: str, rid: str, line: int) -> list[Any]:
    value = row.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError(rid, name, f"must be a list, got {type(value).__name__}", line=line)
    return value


def _images(
    row: dict[str, Any], rid: str, line: int, *, images_dir: Path | None, report: LoadReport
) -> tuple[ImageRef, ...]:
    names = _list_field(row, "images", rid, line)
    if not all(isinstance(n, str) and n for n in names):
        raise RecordError(rid, "images", f"must be a list of file names, got {names!r}", line=line)
    if images_dir is None or not names:
        return ()
    views = _list_field(row, "views", rid, line)
    folder = row.get("r2gen_id") if isinstance(row.get("r2gen_id"), str) else r2gen_folder(names)
    found: list[ImageRef] = []
    for i in range(len(names)):
        candidates = candidate_image_paths(images_dir, names, i, folder=folder)
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            report.images_missing += 1
            continue
        report.images_found += 1
        # R2Gen renamed the files to 0.png, 1.png without recording which Open-i image each is,
        # so a view label would be a guess there: say "unknown" rather than risk a wrong one.
        in_r2gen = hit.parent.name == folder and hit.name == f"{i}.png"
        view = "unknown" if in_r2gen else map_iu_view(views[i] if i < len(views) else None)
        found.append(ImageRef(path=absolute_path(hit), view=view))
    if not found:
        report.studies_without_found_image += 1
    return tuple(found)


def read_iu_xray(
    folder: str | Path,
    *,
    images_dir: str | Path | None = None,
    split: str | None = None,
    split_field: str = "split",
    normalize: bool = True,
) -> LoadResult:
    """Read the IU X-ray studies of ``folder/reports.jsonl`` as study records, with a :class:`LoadReport`.

    Records get source ``iu_xray``, licence ``CC BY-NC-ND 4.0``, language ``en``. Without
    ``images_dir`` every study is text-only (empty ``images``) and its ``indication`` is its only
    study-specific input.

    Args:
        folder: the folder holding ``reports.jsonl``.
        images_dir: where the user's copy of the IU images is (any of the layouts in the module
            docstring); ``None`` for text-only studies. Images not found are dropped and counted.
        split: keep only this split; ``None`` keeps all (studies outside ``r2gen_split`` then have
            ``split=None``).
        split_field: ``"split"`` (the data set's fixed study-id hash split, 70/10/20, every study)
            or ``"r2gen_split"`` (R2Gen's split, for comparison with published IU numbers).
        normalize: rewrite each report in the normalized form ECHO trains on (method.md §3.5,
            :mod:`.normalize`), keeping the source in ``raw_report``; ``False`` keeps the source text
            (whitespace-cleaned, ``XXXX`` masks kept).

    Raises:
        RecordFileError: a row with a wrong type, a duplicate id or a bad split value.
        FileNotFoundError / NotADirectoryError: the folder or ``images_dir`` is not usable.
    """
    folder = Path(folder)
    check_split(split)
    if split_field not in IU_SPLIT_FIELDS:
        raise ValueError(f"split_field must be one of {IU_SPLIT_FIELDS}, got {split_field!r}")
    reports_path = folder / IU_REPORTS_FILE
    if not reports_path.is_file():
        raise FileNotFoundError(f"IU X-ray folder {str(folder)!r} has no {IU_REPORTS_FILE}")
    img_root = Path(images_dir) if images_dir is not None else None
    if img_root is not None and not img_root.is_dir():
        raise NotADirectoryError(f"images_dir {str(img_root)!r} is not a folder")
    report = LoadReport(source=IU_SOURCE, path=str(folder))
    seen: dict[str, int] = {}
    records = read_rows(
        reports_path,
        lambda raw, line: _row_to_record(raw, line, images_dir=img_root, split_field=split_field, report=report,
                                         seen=seen, normalize=normalize),
        report=report, split=split, desc="iu_xray", unit="study",
    )
    if normalize:
        report.notes.append(f"{sum(r.raw_report is not None for r in records)} reports normalized "
                            "(method.md §3.5); the source text is in raw_report")
    if report.images_missing:
        log.warning("%s: %d listed images were not found under %s and were dropped",
                    folder, report.images_missing, img_root)
    log.info(report.summary())
    return LoadResult(records, report)


def _row_to_record(
    raw: str, line: int, *, images_dir: Path | None, split_field: str, report: LoadReport, seen: dict[str, int],
    normalize: bool = True,
) -> StudyRecord | None:
    row, rid = parse_row(raw, line, seen)
    findings = clean_text(_str_field(row, "findings", rid, line, required=False))
    impression = clean_text(_str_field(row, "impression", rid, line, required=False))
    if not findings and not impression:
        report.skip("findings and impression both empty")
        return None
    indication = clean_text(_str_field(row, "indication", rid, line, required=False)) or None
    split_value = row.get(split_field)
    if split_value is not None and split_value not in ("train", "val", "test"):
        raise RecordError(rid, split_field, f"must be 'train', 'val', 'test' or null, got {split_value!r}", line=line)
    images = _images(row, rid, line, images_dir=images_dir, report=report)
    raw_report = None
    if normalize:
        raw_report = raw_report_text(findings, impression)
        normalized = normalize_sections(findings, impression)
        findings, impression = normalized.findings, normalized.impression
    return StudyRecord(
        id=rid, findings=findings, impression=impression, images=images, indication=indication,
        language="en", source=IU_SOURCE, split=split_value, licence=IU_LICENCE, raw_report=raw_report,
    )


def load_iu_xray(folder: str | Path, **options: Any) -> list[StudyRecord]:
    """Load the IU X-ray studies of ``folder/reports.jsonl``: :func:`read_iu_xray` (same arguments and errors)
    without its report."""
    return read_iu_xray(folder, **options).records

"""Training data adapters: public data sets and record files in, :class:`StudyRecord` lists out.

Public API (flat)::

    from echo_model.data import load_dataset, deduplicate, remove_overlap

* :func:`load_dataset` (``registry``) detects the layout and calls one of
  :func:`load_iu_xray`, :func:`load_covid_cxr_notes`, :func:`load_records_jsonl`;
  ``read_*`` variants also return a :class:`LoadReport` (kept / skipped by reason / images);
* :func:`deduplicate` and :func:`remove_overlap` (``dedup``) drop identical studies and
  training studies that share an image or report text with evaluation data.

See ``docs/data.md`` for the rules and the counts on the real data. Names are resolved lazily
so that ``python -m echo_model.data.registry`` runs without a double-import warning and importing
this package does no work.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .covid_notes import load_covid_cxr_notes, read_covid_cxr_notes
    from .dedup import DedupReport, ImageHasher, deduplicate, remove_overlap
    from .iu_xray import load_iu_xray, read_iu_xray
    from .jsonl import LoadReport, LoadResult, RecordFileError, load_records_jsonl, read_records_jsonl
    from .registry import DatasetLayoutError, detect_layout, load_dataset, read_dataset

_EXPORTS: dict[str, str] = {
    "load_dataset": "registry", "read_dataset": "registry", "detect_layout": "registry",
    "DatasetLayoutError": "registry",
    "load_iu_xray": "iu_xray", "read_iu_xray": "iu_xray",
    "load_covid_cxr_notes": "covid_notes", "read_covid_cxr_notes": "covid_notes",
    "load_records_jsonl": "jsonl", "read_records_jsonl": "jsonl", "LoadReport": "jsonl", "LoadResult": "jsonl",
    "RecordFileError": "jsonl",
    "deduplicate": "dedup", "remove_overlap": "dedup", "DedupReport": "dedup", "ImageHasher": "dedup",
}

__all__ = [
    "DatasetLayoutError", "DedupReport", "ImageHasher", "LoadReport", "LoadResult", "RecordFileError",
    "deduplicate", "detect_layout", "load_covid_cxr_notes", "load_dataset", "load_iu_xray", "load_records_jsonl",
    "read_covid_cxr_notes", "read_dataset", "read_iu_xray", "read_records_jsonl", "remove_overlap",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'echo_model.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)

"""Find the studies in folders and file lists: what ``echo-report --batch`` drafts.

Rules:

* DICOM files (detected from their bytes, not their names) are grouped by ``StudyInstanceUID``; a file without
  one is a study of its own. Views are ordered frontal (``ViewPosition`` PA/AP) before lateral (LL/RL/LATERAL)
  before anything else, then by path. Only the header is read (``stop_before_pixels=True``): a file whose
  ``Modality`` is a known code other than CR/DX (CT, MR, ...) is skipped and counted, not decoded.
* PNG and JPEG files: one folder is one study (its files in name order) unless ``one_per_file``.
* Other files met while walking a folder (notes, spreadsheets) are skipped and counted. A DICOM file whose header
  cannot be read becomes a study with an ``error`` (the run drafts the rest).

A study's :attr:`StudyFiles.identity` is what its key is computed from (:func:`study_key`): the
``StudyInstanceUID``, or the folder's (file's) absolute path. The key is an HMAC-SHA256 under a secret per-output
key, so a draft file names no study, yet the same study gets the same key when a run is resumed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .imaging.dicom import RADIOGRAPHY_MODALITIES
from .imaging.sniff import detect_format
from .imaging.vocab import MODALITIES, VIEW_POSITIONS, coded

__all__ = ["Discovery", "StudyFiles", "discover_studies", "load_or_create_key", "study_key"]

#: How a ``ViewPosition`` code ranks: frontal first, then lateral, then the rest.
_VIEW_RANK = {"PA": 0, "AP": 0, "LL": 1, "RL": 1, "LATERAL": 1, "LAT": 1}
_VIEW_NAME = {"PA": "pa", "AP": "ap", "LL": "lateral", "RL": "lateral", "LATERAL": "lateral", "LAT": "lateral"}
#: Bytes read to tell a file's format (a DICOM preamble is 128 bytes + "DICM").
_SNIFF_BYTES = 1024
#: Bytes of the secret key of an output file.
KEY_BYTES = 32


@dataclass(frozen=True)
class StudyFiles:
    """One study found on disk.

    Attributes:
        identity: what the study key is computed from (``uid:<StudyInstanceUID>`` or ``path:<absolute path>``);
            never written to a de-identified output.
        paths: the view files, frontal first.
        views: ``"pa"``, ``"ap"``, ``"lateral"`` or ``"unknown"``, one per path.
        error: why the study cannot be drafted (its header could not be read), or None.
    """

    identity: str
    paths: tuple[str, ...]
    views: tuple[str, ...]
    error: str | None = None


@dataclass
class Discovery:
    """The studies to draft and the files left out (reason -> count)."""

    studies: list[StudyFiles] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def skipped_files(self) -> int:
        return sum(self.skipped.values())


@dataclass
class _Dicom:
    path: str
    uid: str | None
    rank: int
    view: str


def discover_studies(inputs: Sequence[str], *, one_per_file: bool = False) -> Discovery:
    """Walk ``inputs`` (folders and files) and group their images into studies, in a stable order.

    Raises:
        ValueError: an input that does not exist or cannot be read (a usage error, before any work).
    """
    files = list(_expand(inputs))
    found = Discovery()
    dicoms: list[_Dicom] = []
    rasters: dict[str, list[str]] = {}
    for path in files:
        kind = _sniff(path)
        if kind is None:
            found.skipped["not a PNG, JPEG or DICOM file"] += 1
        elif kind.startswith("dicom"):
            item = _dicom_header(path, found)
            if isinstance(item, StudyFiles):
                found.studies.append(item)
            elif item is not None:
                dicoms.append(item)
        elif one_per_file:
            found.studies.append(StudyFiles(identity=f"path:{path}", paths=(path,), views=("unknown",)))
        else:
            rasters.setdefault(os.path.dirname(path), []).append(path)
    for folder, paths in rasters.items():
        paths.sort()
        found.studies.append(StudyFiles(identity=f"path:{folder}", paths=tuple(paths), views=("unknown",) * len(paths)))
    groups: dict[str, list[_Dicom]] = {}
    for item in dicoms:
        groups.setdefault(f"uid:{item.uid}" if item.uid else f"path:{item.path}", []).append(item)
    for identity, items in groups.items():
        items.sort(key=lambda d: (d.rank, d.path))
        found.studies.append(StudyFiles(identity=identity, paths=tuple(d.path for d in items),
                                        views=tuple(d.view for d in items)))
    found.studies.sort(key=lambda s: (s.paths[0] if s.paths else "", s.identity))
    return found


def _expand(inputs: Sequence[str]) -> Iterable[str]:
    """Every file under the inputs (absolute, normalised, sorted per folder; each file once)."""
    seen: set[str] = set()
    for raw in inputs:
        path = os.path.abspath(raw)
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    full = os.path.join(root, name)
                    if full not in seen and not name.startswith("."):
                        seen.add(full)
                        yield full
        elif os.path.isfile(path):
            if not os.access(path, os.R_OK):
                raise ValueError(f"{raw}: cannot be read (permission denied)")
            if path not in seen:
                seen.add(path)
                yield path
        else:
            raise ValueError(f"{raw}: no such file or folder")


def _sniff(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return detect_format(fh.read(_SNIFF_BYTES))
    except OSError:
        return None


def _dicom_header(path: str, found: Discovery) -> _Dicom | StudyFiles | None:
    """The header facts of a DICOM file; None when it is skipped (counted), a StudyFiles with an error when
    its header cannot be read."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=["StudyInstanceUID", "Modality", "ViewPosition"])
    except Exception as err:  # noqa: BLE001 - any parser failure is one unreadable file, never the end of the run
        return StudyFiles(identity=f"path:{path}", paths=(path,), views=("unknown",),
                          error=f"the DICOM header cannot be read ({type(err).__name__})")
    modality = coded(ds.get("Modality"), MODALITIES)
    if modality is not None and modality not in RADIOGRAPHY_MODALITIES:
        found.skipped[f"DICOM modality {modality}, not a radiograph"] += 1
        return None
    uid = str(ds.get("StudyInstanceUID", "") or "").strip() or None
    position = coded(ds.get("ViewPosition"), VIEW_POSITIONS)
    return _Dicom(path=path, uid=uid, rank=_VIEW_RANK.get(position or "", 2), view=_VIEW_NAME.get(position or "", "unknown"))


def load_or_create_key(path: str | os.PathLike[str], *, create: bool) -> bytes:
    """The secret key of an output file, read from ``path`` (hex), or made and written there (mode 0600).

    Raises:
        ValueError: the file is missing and ``create`` is False, or it does not hold a key.
    """
    path = Path(path)
    if path.exists():
        text = path.read_text(encoding="ascii", errors="replace").strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) < 16:
            raise ValueError(f"{path}: not a study-key file (expected at least 32 hex digits)")
        return key
    if not create:
        raise ValueError(f"{path}: no such key file; the study keys of the output cannot be recomputed without it")
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex() + "\n")
    return key


def study_key(key: bytes, identity: str) -> str:
    """The de-identified id of a study: HMAC-SHA256 of its identity under the output's key (24 hex digits)."""
    return hmac.new(key, identity.encode("utf-8"), hashlib.sha256).hexdigest()[:24]

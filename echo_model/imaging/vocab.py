"""Closed vocabularies for the DICOM code strings that may leave the input layer.

Why closed lists: Modality, View Position and Body Part Examined are coded values, but devices
and manual entry put free text in them (we have seen patient names in View Position). A value
is passed on (to metadata or a warning) only when it is one of the DICOM defined terms below;
anything else becomes ``None`` / "unrecognised", so no free text can carry identifiers out.
"""

from __future__ import annotations

import re

__all__ = ["BODY_PARTS", "MODALITIES", "VIEW_POSITIONS", "coded", "normalise_code"]

_JUNK = re.compile(r"[^A-Z0-9 _]")

#: DICOM PS3.3 C.7.3.1.1.1 Modality defined terms (current and common retired ones).
MODALITIES = frozenset(
    [
        "AR",
        "ASMT",
        "AU",
        "BDUS",
        "BI",
        "BMD",
        "CR",
        "CT",
        "CTPROTOCOL",
        "DG",
        "DOC",
        "DX",
        "ECG",
        "EPS",
        "ES",
        "FID",
        "GM",
        "HC",
        "HD",
        "IO",
        "IOL",
        "IVOCT",
        "IVUS",
        "KER",
        "KO",
        "LEN",
        "LS",
        "MG",
        "MR",
        "M3D",
        "NM",
        "OAM",
        "OCT",
        "OP",
        "OPM",
        "OPT",
        "OPTBSV",
        "OPTENF",
        "OPV",
        "OSS",
        "OT",
        "PLAN",
        "PR",
        "PT",
        "PX",
        "REG",
        "RESP",
        "RF",
        "RG",
        "RTDOSE",
        "RTIMAGE",
        "RTPLAN",
        "RTRECORD",
        "RTSTRUCT",
        "RWV",
        "SEG",
        "SM",
        "SMR",
        "SR",
        "SRF",
        "STAIN",
        "TG",
        "US",
        "VA",
        "XA",
        "XC",
    ]
)

#: DICOM PS3.3 C.8.11.5.1.1 View Position defined terms for DX, plus common vendor forms.
VIEW_POSITIONS = frozenset({"AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "LAT", "LATERAL"})

#: A subset of DICOM PS3.16 Annex L Body Part Examined terms (chest-like and common others).
BODY_PARTS = frozenset(
    [
        "CHEST",
        "THORAX",
        "LUNG",
        "PORT",
        "CHEST",
        "CHEST_LAT",
        "CHEST",
        "LAT",
        "RIB",
        "RIBS",
        "STERNUM",
        "CLAVICLE",
        "HEART",
        "MEDIASTINUM",
        "ABDOMEN",
        "PELVIS",
        "HIP",
        "KNEE",
        "ANKLE",
        "FOOT",
        "HAND",
        "WRIST",
        "ELBOW",
        "SHOULDER",
        "ARM",
        "LEG",
        "FEMUR",
        "TIBIA",
        "FIBULA",
        "HUMERUS",
        "FOREARM",
        "FINGER",
        "TOE",
        "HEEL",
        "SKULL",
        "HEAD",
        "BRAIN",
        "NECK",
        "SINUS",
        "JAW",
        "TMJ",
        "FACE",
        "ORBIT",
        "NOSE",
        "CSPINE",
        "TSPINE",
        "LSPINE",
        "SSPINE",
        "SPINE",
        "SACRUM",
        "COCCYX",
        "BREAST",
        "EXTREMITY",
        "WHOLEBODY",
    ]
) | {"PORT CHEST", "CHEST LAT"}


def normalise_code(value: object, *, max_len: int = 16) -> str | None:
    """Upper-case, keep ``[A-Z0-9 _]``, clip to the CS length; None when nothing is left."""
    if value is None:
        return None
    text = _JUNK.sub("", str(value).strip().upper())[:max_len].strip()
    return text or None


def coded(value: object, vocabulary: frozenset[str]) -> str | None:
    """The normalised value if it is a known term of ``vocabulary``, else None."""
    text = normalise_code(value)
    return text if text in vocabulary else None

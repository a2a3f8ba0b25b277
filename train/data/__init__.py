"""Deprecated alias of :mod:`echo_model.data` (the corpus adapters moved into the library).

``from train.data import load_dataset`` keeps working for one release and warns; import from
:mod:`echo_model.data` instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import echo_model.data as _data

warnings.warn(
    "train.data moved to echo_model.data; 'from train.data import ...' will stop working in the next release",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = list(_data.__all__)


def __getattr__(name: str) -> Any:
    return getattr(_data, name)

"""``echo-report`` input errors: one line on stderr, exit status 2, no traceback, no model loaded."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from echo_model.cli import main, quiet_loading


def _one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("echo-report: error: ") and "Traceback" not in err and "Errno" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_folder_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, str(tmp_path), "is a folder")


def test_a_missing_file_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.png")]) == 2
    _one_error_line(capsys.readouterr().err, "nope.png", "no such file")


def test_an_unreadable_file_is_refused_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"\x89PNG\r\n\x1a\n")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the permission check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) else real(p, mode))
    assert main([str(locked)]) == 2
    _one_error_line(capsys.readouterr().err, "locked.png", "cannot be read")


def test_a_file_that_is_not_an_image_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not an image\nsecond line\n", encoding="utf-8")
    assert main([str(notes)]) == 2
    _one_error_line(capsys.readouterr().err, "notes.png", "not a PNG, JPEG or DICOM")


@pytest.mark.parametrize(("seconds", "shown"), [(0.0, False), (0.3, True)])
def test_the_loading_line_shows_only_when_loading_is_slow(seconds: float, shown: bool) -> None:
    from transformers.utils import logging as hf_logging

    out = io.StringIO()
    with quiet_loading(after_s=0.1, stream=out):
        assert not hf_logging.is_progress_bar_enabled()  # transformers' own bar is hidden while loading
        time.sleep(seconds)
    assert ("loading the model weights" in out.getvalue()) is shown
    assert hf_logging.is_progress_bar_enabled()


def test_a_fast_load_prints_no_progress_bar(tmp_path: Path, checkpoint, capsys) -> None:
    from conftest import synthetic_cxr

    checkpoint.save_pretrained(tmp_path / "model")
    image = tmp_path / "frontal.png"
    synthetic_cxr(3, (256, 240)).save(image)
    capsys.readouterr()
    assert main(["--model", str(tmp_path / "model"), "--max-new-tokens", "8", str(image)]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err

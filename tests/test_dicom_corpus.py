"""The DICOM loader over a peer's corpus (pydicom's and pydicom-data's files), the harness that runs it,
and the loader fixes the corpus led to (compressed-frame bomb guard, 12-bit JPEG, readable messages)."""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
from test_imaging import jpeg_with_patched_sof
from pydicom import uid as dcm_uid
from pydicom.pixels import get_decoder

from echo_model.imaging import (
    CorruptImageError,
    ImageLimits,
    ImageTooLargeError,
    UnsupportedTransferSyntaxError,
    load_image,
)
from echo_model.imaging.sniff import read_j2k_header
from echo_model.imaging.synthetic import dicom_bytes, phantom_cxr, phantom_cxr_array, synthetic_dicom_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dicom_corpus", ROOT / "scripts" / "dicom_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dicom_corpus"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# --- the corpus -------------------------------------------------------------------------------


def test_every_corpus_file_loads_or_is_refused_with_our_error(corpus: ModuleType) -> None:
    files, offline_missing = corpus.corpus_files()
    sources = {f.source for f in files}
    assert sources == {"pydicom", "pydicom-data"}, sources
    assert all(not Path(f.relative).is_absolute() for f in files)
    outcomes = corpus.run_corpus(files, workers=2, timeout_s=60.0)
    broken = [o for o in outcomes if o.outcome not in corpus.CONTRACT_OUTCOMES]
    assert broken == [], broken
    summary = corpus.summarise(outcomes, offline_missing)
    assert summary["counts"]["loaded"] >= 100 and summary["counts"]["refused"] >= 100, summary
    by_file = {o.file: o for o in outcomes}
    assert by_file["pydicom-data:RG1_UNCR.dcm"].outcome == "loaded"  # the README's real chest radiograph
    for item in outcomes:
        if item.outcome == "refused":  # every refusal is written for a user: file name first, no Python internals
            assert item.message.startswith(Path(item.file.split(":", 1)[1]).name + ": "), item
            assert "object has no attribute" not in item.message and "all available plugins" not in item.message


def test_bounded_run_writes_counts_and_names_without_directories(corpus: ModuleType, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corpus.json"
    assert corpus.main(["--limit", "6", "--workers", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| **all** | 6 |" in printed and "not available offline" in printed
    text = out.read_text(encoding="utf-8")
    report = json.loads(text)
    assert len(report["files"]) == report["summary"]["files"] == 6
    assert sum(report["summary"]["counts"].values()) == 6
    assert "site-packages" not in text and str(Path.home()) not in text


def _fake_worker(tmp_path: Path) -> list[str]:
    """A worker that hangs on '*hang*', dies by a signal on '*crash*' and loads anything else."""
    script = tmp_path / "fake_worker.py"
    script.write_text(
        "import json, os, signal, sys, time\n"
        "for line in sys.stdin:\n"
        "    path = os.path.basename(json.loads(line)['path'])\n"
        "    if 'hang' in path:\n"
        "        time.sleep(60)\n"
        "    if 'crash' in path:\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    print(json.dumps({'outcome': 'loaded', 'seconds': 0.0}), flush=True)\n",
        encoding="utf-8",
    )
    return [sys.executable, str(script)]


def test_harness_counts_a_hang_and_a_crash_and_goes_on(corpus: ModuleType, tmp_path: Path) -> None:
    names = ["a.dcm", "hang.dcm", "b.dcm", "crash.dcm", "c.dcm"]
    files = [corpus.CorpusFile(source="fake", relative=n, path=tmp_path / n) for n in names]
    outcomes = corpus.run_corpus(files, workers=1, timeout_s=1.0, worker_command=_fake_worker(tmp_path))
    assert [o.outcome for o in outcomes] == ["loaded", "timeout", "loaded", "crash", "loaded"]
    assert "signal 11" in outcomes[3].message
    summary = corpus.summarise(outcomes, ["x.dcm"])
    assert summary["counts"] == {"loaded": 3, "refused": 0, "other_exception": 0, "timeout": 1, "crash": 1}
    assert summary["not_available_offline"] == 1


def test_harness_validates_its_arguments(corpus: ModuleType) -> None:
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        corpus.run_corpus([], workers=0)
    with pytest.raises(ValueError, match="timeout_s must be > 0, got -1"):
        corpus.run_corpus([], timeout_s=-1)


# --- loader fixes found by the corpus ---------------------------------------------------------


def _encoded(fmt: str, size: tuple[int, int] = (64, 64), **params: object) -> bytes:
    buffer = io.BytesIO()
    phantom_cxr(size).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _encapsulated(frame: bytes, syntax: str, *, bits_stored: int = 8) -> bytes:
    dtype = "uint16" if bits_stored > 8 else "uint8"
    ds = synthetic_dicom_dataset(phantom_cxr_array((64, 64), dtype=dtype), bits_stored=bits_stored,
                                 transfer_syntax=syntax, encapsulated_frames=[frame])
    return dicom_bytes(ds)



def _patched_siz(codestream: bytes, *, width: int, height: int) -> bytes:
    data = bytearray(codestream)
    assert data[:4] == b"\xff\x4f\xff\x51"
    struct.pack_into(">II", data, 8, width, height)  # Xsiz, Ysiz (offsets are 0)
    return bytes(data)


def test_j2k_header_is_read_bare_and_inside_jp2_boxes() -> None:
    bare = _encoded("JPEG2000", (64, 48), no_jp2=True)
    boxed = _encoded("JPEG2000", (64, 48))
    assert bare.startswith(b"\xff\x4f\xff\x51") and not boxed.startswith(b"\xff\x4f")
    for data in (bare, boxed):
        header = read_j2k_header(data)
        assert header is not None and (header.width, header.height, header.bit_depth) == (64, 48, 8)
    assert read_j2k_header(b"\xff\x4f\xff\x51" + bytes(10)) is None  # cut inside SIZ
    assert read_j2k_header(b"not a codestream") is None


@pytest.mark.parametrize("syntax", [dcm_uid.JPEG2000Lossless, dcm_uid.JPEGBaseline8Bit])
def test_compressed_frame_declaring_a_bomb_is_refused_before_decoding(syntax: str) -> None:
    if syntax == dcm_uid.JPEG2000Lossless:
        frame = _patched_siz(_encoded("JPEG2000", no_jp2=True), width=60000, height=60000)
    else:
        frame = jpeg_with_patched_sof(_encoded("JPEG"), width=60000, height=60000)
    with pytest.raises(ImageTooLargeError, match=r"compressed frame declares 60000x60000 = 3600\.0 megapixels "
                                                 r"\(the DICOM header says 64x64\).*decompression-bomb"):
        load_image(_encapsulated(frame, syntax), name="bomb.dcm")


def test_compressed_frame_limit_follows_the_configured_limit() -> None:
    frame = jpeg_with_patched_sof(_encoded("JPEG"), width=3000, height=3000)
    with pytest.raises(ImageTooLargeError, match="9.0 megapixels"):
        load_image(_encapsulated(frame, dcm_uid.JPEGBaseline8Bit), limits=ImageLimits(max_pixels=4_000_000))


def test_twelve_bit_jpeg_with_only_pillow_names_the_decoder_to_install() -> None:
    if set(get_decoder(dcm_uid.JPEGExtended12Bit).available_plugins) - {"pillow"}:
        pytest.skip("a 12-bit capable JPEG decoder is installed here")
    frame = jpeg_with_patched_sof(_encoded("JPEG"), precision=12)
    with pytest.raises(UnsupportedTransferSyntaxError,
                       match=r"12-bit JPEG Extended .*Pillow\) cannot read; run `pip install pylibjpeg"):
        load_image(_encapsulated(frame, dcm_uid.JPEGExtended12Bit, bits_stored=12), name="ct12.dcm")


def test_decoder_failure_says_what_the_plugin_said() -> None:
    with pytest.raises(CorruptImageError) as info:
        load_image(_encapsulated(b"\xff\xd8\xff\xe0" + bytes(100), dcm_uid.JPEGBaseline8Bit), name="bad.dcm")
    message = str(info.value)
    assert message.startswith("bad.dcm: the DICOM pixel data cannot be decoded (pillow: cannot identify image file")
    assert "all available plugins" not in message and " object at 0x" not in message


def test_pixel_data_without_image_description_names_the_missing_attributes() -> None:
    ds = synthetic_dicom_dataset(phantom_cxr_array((64, 64)), bits_stored=8)
    del ds.Rows, ds.PhotometricInterpretation
    with pytest.raises(CorruptImageError, match=r"has pixel data but no Rows, Photometric Interpretation;"):
        load_image(dicom_bytes(ds), name="nometa.dcm")

"""The viewer's maths and storage: windowing, presets, the kept 16-bit originals (round trip, de-identification,
deletion), view positions asked for PNGs, and windowing a study reopened from a fresh store."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.service import ingest_uploads
from app.store import Store, StoreError
from app.viewer import (
    HU_PRESETS,
    PRESETS,
    RELATIVE_PRESETS,
    ViewPixels,
    preset_window,
    render_pane,
    render_study,
    slider_range,
    view_pixels,
    window_pixels,
)
from echo_model.imaging import (
    ALLOWED_PNG_CHUNKS,
    decode_original_png,
    encode_original,
    load_image,
    png_chunk_types,
    to_deidentified_original_png,
)
from echo_model.imaging.original import original_png
from echo_model.imaging.synthetic import dicom_bytes, phantom_cxr, phantom_cxr_array, synthetic_dicom_dataset
from echo_model.imaging.tone import Window


def dicom16(*, photometric: str = "MONOCHROME2", seed: int = 2, view: str = "PA", **attributes: object) -> bytes:
    """A 12-bit DX DICOM (values 0..4095 after Rescale) with a file window narrower than its range."""
    pixels = phantom_cxr_array((200, 180), dtype="uint16", seed=seed)
    if photometric == "MONOCHROME1":
        pixels = (pixels.max() - pixels).astype(np.uint16)
    ds = synthetic_dicom_dataset(pixels, bits_stored=12, photometric=photometric, attributes={
        "ViewPosition": view, "BodyPartExamined": "CHEST", "PatientName": "DOE^JOHN", "PatientID": "MRN-4411",
        "WindowCenter": 1600, "WindowWidth": 2400, **attributes})
    return dicom_bytes(ds)


def _pixels(values: np.ndarray, window: Window, *, inverted: bool = False, hounsfield: bool = False) -> ViewPixels:
    return ViewPixels(values=values.astype(np.float64), file_window=window, inverted=inverted,
                      hounsfield=hounsfield, deep=True)


# ---------------------------------------------------------------------------------------- windowing maths
def test_window_maps_the_window_to_black_white_and_invert_swaps_them() -> None:
    values = np.array([[0.0, 1000.0, 1500.0, 2000.0, 3000.0]])
    grey = window_pixels(values, Window(1500.0, 1000.0, "LINEAR_EXACT"))
    assert grey.dtype == np.uint8 and grey.tolist() == [[0, 0, 128, 255, 255]]
    assert window_pixels(values, Window(1500.0, 1000.0, "LINEAR_EXACT"), invert=True).tolist() == [[255, 255, 127, 0, 0]]
    ramp = np.arange(256, dtype=np.float64)[None, :]
    assert np.array_equal(window_pixels(ramp, Window(128.0, 256.0, "LINEAR")), ramp.astype(np.uint8))


def test_presets_span_the_views_density_percentiles_not_the_file_window() -> None:
    # A CR file whose VOI window (C 15000 / W 30000) is far wider than its values (0..10000).
    ramp = np.random.default_rng(0).uniform(0.0, 10000.0, (400, 400))
    file_window = Window(15000.0, 30000.0, "LINEAR")
    normal = _pixels(ramp, file_window)
    lung, mediastinum, bone = (preset_window(normal, name) for name in ("lung", "mediastinum", "bone"))
    assert preset_window(normal, "default") == file_window
    span = {name: (w.center - w.width / 2, w.center + w.width / 2)
            for name, w in (("lung", lung), ("mediastinum", mediastinum), ("bone", bone))}
    # Every preset window lies inside the data, at its percentiles (the sample is every 4th row and column).
    for name, (lo_pct, hi_pct) in RELATIVE_PRESETS.items():
        lo, hi = span[name]
        assert lo == pytest.approx(100.0 * lo_pct, abs=150) and hi == pytest.approx(100.0 * hi_pct, abs=150), name
    assert lung.center < mediastinum.center and bone.width > mediastinum.width
    # MONOCHROME1: dense values are the low ones, so the lung window sits on the high values.
    inverted = _pixels(ramp, file_window, inverted=True)
    inv_lung = preset_window(inverted, "lung")
    assert inv_lung.center + inv_lung.width / 2 == pytest.approx(9900.0, abs=150)
    assert inv_lung.center - inv_lung.width / 2 == pytest.approx(3800.0, abs=150)
    # Hounsfield data: the usual CT windows.
    ct = _pixels(np.zeros((2, 2)), Window(40.0, 400.0), hounsfield=True)
    assert {name: (w.center, w.width) for name in HU_PRESETS for w in [preset_window(ct, name)]} == HU_PRESETS
    with pytest.raises(ValueError, match="unknown window preset 'soft'"):
        preset_window(normal, "soft")


def test_each_preset_shows_different_pixels_of_a_deep_image() -> None:
    values = phantom_cxr_array((64, 64), dtype="uint16", seed=1).astype(np.float64)
    pixels = _pixels(values, Window(float(values.mean()), float(np.ptp(values)), "LINEAR"))
    shown = {name: window_pixels(values, preset_window(pixels, name)).tobytes() for name in PRESETS}
    assert len(set(shown.values())) == len(PRESETS)


def test_sliders_span_the_values_and_every_preset_not_0_255() -> None:
    values = np.array([[-1000.0, 0.0], [2000.0, 3000.0]])
    pixels = _pixels(values, Window(1000.0, 2000.0))
    r = slider_range(pixels)
    assert r.center_min <= -1000 and r.center_max >= 3000 and r.width_max >= 8000 and r.step == 1.0
    for name in PRESETS:
        w = preset_window(pixels, name)
        assert r.center_min <= w.center <= r.center_max and 1 <= w.width <= r.width_max
    tiny = slider_range(_pixels(np.array([[0.0, 0.5]]), Window(0.25, 0.5)))
    assert tiny.step <= 0.01 and tiny.center_max >= 0.5


# ---------------------------------------------------------------------------------------- 16-bit originals
def _ihdr(png: bytes) -> tuple[int, int, int, int]:
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    return width, height, depth, colour


def test_16_bit_png_round_trip_is_exact_for_integer_values() -> None:
    values = np.array([[-1024, 0, 3071], [5, 6, 40000 - 1024]], dtype=np.int32)
    original = encode_original(values)
    assert (original.slope, original.intercept) == (1.0, -1024.0)
    png = original_png(original.stored)
    assert png_chunk_types(png) == [b"IHDR", b"IDAT", b"IEND"] and _ihdr(png) == (3, 2, 16, 0)
    assert np.array_equal(decode_original_png(png), original.stored)
    assert np.array_equal(decode_original_png(png) * original.slope + original.intercept, values)


def test_fractional_values_are_quantised_to_65536_levels() -> None:
    values = np.linspace(-0.5, 2.5, 100).reshape(10, 10)
    original = encode_original(values)
    assert original.stored.max() == 65535 and abs(original.values() - values).max() <= original.slope / 2 + 1e-12
    with pytest.raises(ValueError, match="finite"):
        encode_original(np.array([[0.0, np.nan]]))


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_file_default_window_of_the_originals_gives_the_stored_8_bit_image(photometric: str) -> None:
    loaded = load_image(dicom16(photometric=photometric))
    assert loaded.original is not None and loaded.metadata["display_inverted"] == int(photometric == "MONOCHROME1")
    png = to_deidentified_original_png(loaded)
    assert png is not None and set(png_chunk_types(png)) <= ALLOWED_PNG_CHUNKS and _ihdr(png)[2] == 16
    assert b"DOE" not in png and b"MRN-4411" not in png
    pixels = _pixels(loaded.original.values(), Window(1600.0, 2400.0, "LINEAR"),
                     inverted=bool(loaded.metadata["display_inverted"]))
    pane = render_pane(pixels, pixels.file_window, invert=False, position=0, caption="view 1")
    with Image.open(io.BytesIO(pane.png)) as shown:
        assert np.array_equal(np.asarray(shown), np.asarray(loaded.image))


def test_8_bit_uploads_keep_no_16_bit_copy() -> None:
    buffer = io.BytesIO()
    phantom_cxr((128, 128)).save(buffer, format="PNG")
    loaded = load_image(buffer.getvalue())
    assert loaded.original is None and to_deidentified_original_png(loaded) is None


# ---------------------------------------------------------------------------------------- stored studies
def _ingest(store: Store, folder: Path, files: dict[str, bytes]) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    study, _ = ingest_uploads(paths, store=store, owner="alice", upload_cache_dir=folder)
    return study


def _png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    phantom_cxr((160, 150), seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_reopened_study_windows_its_16_bit_originals_and_deletion_removes_them(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    study = _ingest(store, tmp_path / "cache", {"IM1": dicom16(), "side.png": _png_bytes(4)})
    dicom_view, png_view = study.images
    assert dicom_view.original_path is not None and dicom_view.original_path.name.endswith(".16.png")
    assert png_view.original_path is None and dicom_view.view == "pa"
    store.close()

    reopened = Store(tmp_path / "data")  # a new process: only the files and rows are left
    study = reopened.get_study(study.id, "alice")
    pixels = view_pixels(study.images[0].path, study.images[0].metadata, original_path=study.images[0].original_path)
    assert pixels.deep and pixels.values.max() > 255 and pixels.file_window == Window(1600.0, 2400.0, "LINEAR")
    frames = {name: render_study(study, selected=0, preset=name).html for name in PRESETS}
    assert len(set(frames.values())) == len(PRESETS) and all(f.count("<img") == 2 for f in frames.values())
    shown = render_study(study, selected=0, preset="lung")
    assert shown.window == preset_window(pixels, "lung") and shown.sliders.center_max > 255
    manual = render_study(study, selected=0, window=(1000.0, 500.0))
    assert manual.window.center == 1000.0 and "(manual)" in manual.html
    with pytest.raises(ValueError, match="width >= 1"):
        render_study(study, selected=0, window=(1000.0, 0.0))

    files = {p.name for p in (tmp_path / "data" / "images").iterdir()}
    assert files == {f"{dicom_view.content_hash}.png", f"{dicom_view.content_hash}.16.png",
                     f"{png_view.content_hash}.png"}
    reopened.delete_study(study.id, "alice")
    assert list((tmp_path / "data" / "images").iterdir()) == []


def test_a_png_view_position_is_asked_once_and_stored(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    study = _ingest(store, tmp_path / "cache", {"a.png": _png_bytes(1), "b.png": _png_bytes(2)})
    assert [img.view for img in study.images] == ["unknown", "unknown"]
    assert "position unknown" in render_study(study, selected=1).html
    study = store.set_view(study.id, "alice", position=1, view="lateral")
    assert [img.view for img in study.images] == ["unknown", "lateral"]
    assert "view 2 · lateral" in render_study(study, selected=1).html
    assert [e.action for e in store.audit_trail(study_id=study.id)][-1] == "study.set_view"
    with pytest.raises(StoreError, match="unknown view 'side'"):
        store.set_view(study.id, "alice", position=0, view="side")
    with pytest.raises(StoreError, match="no view at position 7"):
        store.set_view(study.id, "alice", position=7, view="pa")
    with pytest.raises(StoreError, match="another user"):
        store.set_view(study.id, "bob", position=0, view="pa")


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int16, np.int32, np.uint32])
def test_integer_originals_are_kept_exactly_without_a_float_copy(dtype: type) -> None:
    """The integer fast path of encode_original gives what the float64 path gives: the values exactly, from
    their minimum, also where ``x - min`` does not fit the type (signed data spanning both signs)."""
    info = np.iinfo(dtype)
    lo = max(int(info.min), -30_000)
    values = np.array([[lo, lo + 1], [lo + 65_535 if lo + 65_535 <= info.max else int(info.max), 0]], dtype=dtype)
    original = encode_original(values)
    assert original.stored.dtype == np.uint16
    assert (original.slope, original.intercept) == (1.0, float(lo))
    assert np.array_equal(original.values(), values.astype(np.float64))
    wide = encode_original(np.array([[0, 70_000]], dtype=np.int32))  # wider than 16 bits: quantised, not wrapped
    assert wide.slope > 1.0 and wide.stored.tolist() == [[0, 65_535]]

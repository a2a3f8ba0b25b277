"""The app's service layer: uploads de-identified and deleted, token pieces, windowing, streaming per block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_cxr
from PIL import Image

from app.service import (
    DraftingService,
    PieceDecoder,
    confidence_band,
    ingest_uploads,
    load_study_images,
    redraft_prefix,
)
from app.settings import AppSettings
from app.store import Store
from echo_model.imaging import UnsupportedFormatError, png_chunk_types
from echo_model.sampling import SamplerConfig

PHI_NAME = "DOE_JOHN_19520101"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, checkpoint) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    checkpoint.save_pretrained(path)
    (path / "README.md").write_text("# Tiny test card\nRandom weights.\n")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "data")
    yield s
    s.close()


def _upload(cache: Path, name: str, image: Image.Image | None = None, *, text: str | None = None) -> Path:
    folder = cache / f"upload{len(list(cache.glob('*')))}"
    folder.mkdir(parents=True)
    path = folder / name
    if text is not None:
        path.write_text(text)
    else:
        (image or synthetic_cxr(0)).save(path)
    return path


# ---------------------------------------------------------------------------------------- uploads
def test_upload_is_stored_deidentified_without_its_file_name_and_deleted(tmp_path: Path, store: Store) -> None:
    cache = tmp_path / "gradio-cache"
    upload = _upload(cache, f"{PHI_NAME}.png", synthetic_cxr(1, (256, 240)))
    study, warnings = ingest_uploads([upload], store=store, owner="alice", upload_cache_dir=cache)
    assert not upload.exists() and not upload.parent.exists()
    stored = study.images[0]
    assert stored.label == "view 1" and png_chunk_types(stored.path.read_bytes()) == [b"IHDR", b"IDAT", b"IEND"]
    with Image.open(stored.path) as png:
        assert np.array_equal(np.asarray(png.convert("L")), np.asarray(synthetic_cxr(1, (256, 240))))
    everything = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert PHI_NAME.encode() not in everything
    assert all(PHI_NAME not in w for w in warnings)


def test_small_image_warning_reaches_the_caller(tmp_path: Path, store: Store) -> None:
    cache = tmp_path / "cache"
    study, warnings = ingest_uploads([_upload(cache, "a.png", synthetic_cxr(0, (120, 100)))], store=store,
                                     owner="alice", upload_cache_dir=cache)
    assert any(w.startswith("view 1:") and "small" in w for w in warnings)
    assert study.images[0].warnings


def test_bad_upload_error_names_the_uploaded_file_and_is_deleted(tmp_path: Path, store: Store) -> None:
    cache = tmp_path / "cache"
    good = _upload(cache, "frontal.png")
    bad = _upload(cache, "lateral.png", text="<html><body>login</body></html>")
    with pytest.raises(UnsupportedFormatError, match=r"^lateral\.png: .*HTML"):
        ingest_uploads([good, bad], store=store, owner="alice", upload_cache_dir=cache)
    assert not good.exists() and not bad.exists()
    assert store.history("alice") == []


def test_files_outside_the_upload_cache_are_never_deleted(tmp_path: Path, store: Store) -> None:
    mine = tmp_path / "my-scans" / "frontal.png"
    mine.parent.mkdir()
    synthetic_cxr(2).save(mine)
    ingest_uploads([mine], store=store, owner="alice", upload_cache_dir=tmp_path / "cache")
    assert mine.exists()


def test_second_upload_appends_views_until_the_first_draft(tmp_path: Path, store: Store) -> None:
    cache = tmp_path / "cache"
    first, _ = ingest_uploads([_upload(cache, "a.png", synthetic_cxr(3))], store=store, owner="alice",
                              upload_cache_dir=cache)
    second, warnings = ingest_uploads([_upload(cache, "b.png", synthetic_cxr(3))], store=store, owner="alice",
                                      upload_cache_dir=cache, study_id=first.id)
    assert second.id == first.id and [i.label for i in second.images] == ["view 1", "view 2"]
    assert any("pixel-identical to 'view 1'" in w for w in warnings)


# ---------------------------------------------------------------------------------------- display helpers
def test_piece_decoder_holds_partial_characters_and_stops_at_eos() -> None:
    decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")
    dec = PieceDecoder(decode, eos_token_id=0)
    text = "Hé所"
    ids = list(text.encode())  # H, é (2 bytes), 所 (3 bytes)
    confs = [0.95, 0.9, 0.3, 0.8, 0.7, 0.99]
    pieces = dec.feed(ids[:2], confs[:2]) + dec.feed(ids[2:] + [0, 65], confs[2:] + [1.0, 1.0])
    assert [(p.text, p.confidence) for p in pieces] == [("H", 0.95), ("é", 0.3), ("所", 0.7)]
    assert dec.stopped and dec.flush() == []
    assert [p.band for p in pieces] == ["high", "low", "medium"]


def test_piece_decoder_matches_the_tokenizer_on_real_tokens(tokenizer) -> None:
    text = "Findings: The heart is normal in size. 所见：心影不大。"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    dec = PieceDecoder(lambda x: tokenizer.decode(x, skip_special_tokens=True), tokenizer.eos_token_id)
    pieces = dec.feed(ids, [0.5] * len(ids)) + dec.flush()
    assert "".join(p.text for p in pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert 0 < len(pieces) <= len(ids)


@pytest.mark.parametrize(("value", "band"), [(0.95, "high"), (0.9, "high"), (0.6, "medium"), (0.59, "low"), (0.0, "low")])
def test_confidence_bands(value: float, band: str) -> None:
    assert confidence_band(value) == band


def test_redraft_keeps_findings_unless_the_impression_was_rewritten() -> None:
    assert redraft_prefix("Lungs clear.", "No acute disease.", draft_impression="No acute disease.") == \
        "Findings: Lungs clear."
    assert redraft_prefix("Lungs clear.", "", draft_impression="x") == "Findings: Lungs clear."
    assert redraft_prefix("Lungs clear.", "Small effusion.", draft_impression="Normal.") == \
        "Findings: Lungs clear. Impression: Small effusion."
    assert redraft_prefix("肺清。", "无", draft_impression="无", lang="zh") == "所见：肺清。"


# ---------------------------------------------------------------------------------------- models
def test_only_configured_models_can_be_used(model_dir: Path) -> None:
    service = DraftingService(AppSettings(models=(str(model_dir),)))
    assert service.check_model("") == str(model_dir)
    with pytest.raises(ValueError, match="not offered"):
        service.check_model("/etc")


def test_model_info_reads_languages_revision_and_card_without_loading(model_dir: Path) -> None:
    service = DraftingService(AppSettings(models=(str(model_dir),)))
    info = service.model_info()
    assert info.languages == ("en",) and info.revision == "unversioned" and info.block_length == 4
    assert info.card is not None and "Tiny test card" in info.card
    assert service._drafters == {}


def test_stream_gives_one_step_per_block_and_the_draft_on_the_last(model_dir: Path, tmp_path: Path) -> None:
    service = DraftingService(AppSettings(models=(str(model_dir),)))
    steps = list(service.stream([synthetic_cxr(5)], model=None, sampler="echo", language="en",
                                config=SamplerConfig(max_new_tokens=12, fixed_length=True)))
    draft = steps[-1].draft
    assert draft is not None and all(s.draft is None for s in steps[:-1])
    assert [s.index for s in steps] == list(range(len(draft.result.blocks)))
    assert [s.done for s in steps] == [False] * (len(steps) - 1) + [True]
    shown = "".join(p.text for s in steps for p in s.pieces)
    assert " ".join(shown.split()) == draft.report
    assert steps[0].block_ms == pytest.approx(steps[0].seconds * 1000)
    assert sum(s.block_ms for s in steps) == pytest.approx(steps[-1].seconds * 1000)


def test_unsupported_language_is_refused_by_name(model_dir: Path) -> None:
    service = DraftingService(AppSettings(models=(str(model_dir),)))
    with pytest.raises(ValueError, match="'zh' is not supported.*\\['en'\\]"):
        next(service.stream([synthetic_cxr(5)], model=None, sampler="echo", language="zh", config=SamplerConfig()))


def test_redraft_is_refused_cleanly_when_the_drafter_has_no_prefix_option() -> None:
    class OldDrafter:
        def __init__(self, model: str | None) -> None:
            self.model = model

        def stream(self, images, *, sampler="echo", indication=None, lang="en", config=None, warnings=()):
            raise AssertionError("must not be called")

    service = DraftingService(AppSettings(), drafter_factory=OldDrafter)
    assert service.supports_prefix() is False
    with pytest.raises(NotImplementedError, match="not available with this model"):
        service.redraft_from("Findings: kept.", [synthetic_cxr(0)], model=None, sampler="echo", language="en",
                             config=SamplerConfig())


def test_load_study_images_returns_what_was_stored(tmp_path: Path, store: Store) -> None:
    cache = tmp_path / "cache"
    study, _ = ingest_uploads([_upload(cache, "a.png", synthetic_cxr(6))], store=store, owner="alice",
                              upload_cache_dir=cache)
    (img,) = load_study_images(study)
    assert img.mode == "L" and np.array_equal(np.asarray(img), np.asarray(synthetic_cxr(6)))


def test_piece_decoder_drops_tokens_past_the_budget() -> None:
    dec = PieceDecoder(lambda ids: bytes(ids).decode("utf-8", errors="replace"), eos_token_id=None, limit=3)
    pieces = dec.feed(list(b"abcdef"), [0.9] * 6)
    assert "".join(p.text for p in pieces) == "abc" and dec.stopped


def test_upload_into_a_deleted_study_starts_a_new_one(tmp_path: Path, store: Store) -> None:
    cache = tmp_path / "cache"
    first, _ = ingest_uploads([_upload(cache, "a.png", synthetic_cxr(7))], store=store, owner="alice",
                              upload_cache_dir=cache)
    store.delete_study(first.id, "alice")
    second, _ = ingest_uploads([_upload(cache, "b.png", synthetic_cxr(8))], store=store, owner="alice",
                               upload_cache_dir=cache, study_id=first.id)
    assert second.id != first.id and [i.label for i in second.images] == ["view 1"]


@pytest.mark.parametrize(("text", "expected"), [
    ("Findings: Bilateralound--lloundlllll Impression Impression Impression: Normal.",
     ("Bilateralound--lloundlllll", "Normal.")),
    ("FINDINGS: Clear lungs. IMPRESSION: Normal.", ("Clear lungs.", "Normal.")),
    ("findings: a impression impression: b", ("a", "b")),
    ("Findings: no impression of a mass. Impression: ok", ("no impression of a mass.", "ok")),
    ("Findings Findings: a. Impression: b.", ("a.", "b.")),
])
def test_split_report_copes_with_any_case_and_repeated_headers(text: str, expected: tuple[str, str]) -> None:
    from app.service import split_report

    assert split_report(text) == expected


def test_the_streamed_draft_carries_the_report_check_once(model_dir: Path) -> None:
    """The library checks every draft; the app shows those warnings as they are (no second check, no repair)."""
    from echo_model.report_check import check_report

    service = DraftingService(AppSettings(models=(str(model_dir),)))
    steps = list(service.stream([synthetic_cxr(6)], model=None, sampler="echo", language="en",
                                config=SamplerConfig(max_new_tokens=12)))
    draft = steps[-1].draft
    expected = check_report(draft.result.text, normalized=False).warnings
    assert expected and draft.report == draft.result.text
    assert [w for w in draft.warnings if w in expected] == expected

"""Sentence-level evidence and the findings list of the Draft tab.

The pure part (:mod:`app.evidence`) on hand-built token pieces; the findings list through the listener the
Draft tab wires to its editor boxes; the sentence view in the drafting stream of the tiny test model.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from conftest import synthetic_cxr

from app.evidence import (
    UNDERLINE_BELOW,
    Sentence,
    asserted_findings,
    evidence_html,
    findings_html,
    sentence_evidence,
)
from app.handlers import DRAFT_FIELDS, Handlers, _trace_pieces
from app.main import build_demo
from app.service import Services
from app.settings import AppSettings

F = {name: i for i, name in enumerate(DRAFT_FIELDS)}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")

# Three sentences written token by token; "pleural" is two pieces, the second uncertain.
PIECES: list[tuple[str, float | None]] = [
    ("The", 0.99), (" heart", 0.97), (" is", 0.99), (" normal", 0.95), (" in", 0.99), (" size", 0.98), (".", 0.99),
    (" There", 0.99), (" is", 0.98), (" a", 0.97), (" small", 0.96), (" left", 0.93), (" pleu", 0.98),
    ("ral", 0.42), (" effusion", 0.97), (".", 0.99),
    ("\nThe", 0.99), (" lungs", 0.92), (" are", 0.99), (" clear", 0.71), (".", 0.99),
]


def _by_text(sentences: list[Sentence]) -> dict[str, Sentence]:
    return {s.text: s for s in sentences}


def test_a_sentence_takes_its_lowest_token_and_one_uncertain_word_flags_it() -> None:
    sentences = sentence_evidence(PIECES)
    assert [s.text for s in sentences] == ["The heart is normal in size.", "There is a small left pleural effusion.",
                                           "The lungs are clear."]
    first, effusion, lungs = sentences
    assert first.probability == min(p for _, p in PIECES[:7]) and first.band == "high"
    # one piece of one word at 0.42: the whole sentence is low, not the mean of its tokens
    assert effusion.probability == pytest.approx(0.42) and effusion.band == "low"
    assert lungs.probability == pytest.approx(0.71) and lungs.band == "medium"
    assert not [w for w in first.words if w.uncertain()]


def test_words_join_their_subword_pieces_and_take_the_lowest() -> None:
    effusion = sentence_evidence(PIECES)[1]
    words = {w.text: w.probability for w in effusion.words}
    assert "pleu" not in words and "ral" not in words
    assert words["pleural"] == pytest.approx(0.42) and words["effusion"] == pytest.approx(0.97)
    assert [w.text for w in effusion.words if w.uncertain()] == ["pleural"]
    assert [w.text for w in sentence_evidence(PIECES)[2].words if w.uncertain(0.8)] == ["clear"]


def test_the_text_is_kept_exactly_and_numbers_do_not_end_a_sentence() -> None:
    pieces = [("A", 0.9), (" 1", 0.95), (".", 0.95), ("5", 0.95), (" cm", 0.95), (" nodule", 0.5), (".", 0.9),
              ("  Stable", 0.99), ("!", 0.99)]
    sentences = sentence_evidence(pieces)
    assert [s.text for s in sentences] == ["A 1.5 cm nodule.", "Stable!"]
    assert "".join(s.lead + s.text for s in sentences) == "".join(t for t, _ in pieces)
    assert sentences[0].band == "low" and sentences[1].lead == "  "
    assert sentence_evidence(PIECES)[2].lead == "\n"


def test_kept_text_has_no_probability_and_no_underline() -> None:
    kept, drafted = sentence_evidence([("Findings: Heart is normal. ", None), ("Lungs", 0.3), (" clear.", 0.99)])
    assert kept.probability is None and kept.band == "kept" and not [w for w in kept.words if w.uncertain()]
    assert drafted.band == "low" and [w.text for w in drafted.words if w.uncertain()] == ["Lungs"]


def test_chinese_sentences_and_characters() -> None:
    sentences = sentence_evidence([("心影", 0.99), ("不大", 0.5), ("。", 0.99), ("双肺", 0.98), ("清晰", 0.97), ("。", 0.99)])
    assert [s.text for s in sentences] == ["心影不大。", "双肺清晰。"]
    assert [w.text for w in sentences[0].words if w.uncertain()] == ["不", "大"]
    assert sentences[1].band == "high"


def test_a_probability_outside_0_1_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="1.7"):
        sentence_evidence([("heart", 1.7)])
    with pytest.raises(ValueError, match="nan"):
        sentence_evidence([("heart", float("nan"))])


def test_html_marks_classes_underlines_and_escapes() -> None:
    pieces = [*PIECES, (" <b>&", 0.3), (".", 0.99)]
    out = evidence_html(sentence_evidence(pieces), pending=4)
    assert "<b>" not in out and "&lt;" in out and "&gt;" in out and "&amp;" in out
    assert out.count('class="echo-sentence') == 4
    assert re.findall(r'echo-sentence echo-(\w+)', out) == ["high", "low", "medium", "low"]
    underlined = re.findall(r'<u class="echo-uncertain"[^>]*>([^<]*)</u>', out)
    assert underlined == ["pleural", "clear", "&lt;", "b", "&gt;", "&amp;"]
    assert "▒▒▒▒" in out and "lowest token probability" in out  # pending block and the legend
    assert "▒" not in evidence_html(sentence_evidence(PIECES))
    assert evidence_html([]) == "" and UNDERLINE_BELOW == 0.9


def test_findings_list_follows_an_edit() -> None:
    before = {f.observation: f.status for f in asserted_findings("The lungs are clear.", "")}
    assert "Pleural Effusion" not in before and "Pneumothorax" not in before
    after = {f.observation: f.status
             for f in asserted_findings("The lungs are clear. There is a small left pleural effusion.",
                                        "No pneumothorax.")}
    assert after["Pleural Effusion"] == "present" and after["Pneumothorax"] == "absent"
    maybe = {f.observation: f.status for f in asserted_findings("Possible right lower lobe pneumonia.", "")}
    assert maybe["Pneumonia"] == "uncertain"
    rows = asserted_findings("Small left pleural effusion. Possible pneumonia.", "No pneumothorax.")
    assert [r.status for r in rows] == sorted((r.status for r in rows), key=["present", "uncertain", "absent"].index)
    assert "No observation mentioned" in findings_html([])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> gr.Blocks:
    root = tmp_path_factory.mktemp("evidence")
    return build_demo(AppSettings(data_dir=root / "data", upload_cache_dir=root / "cache", max_new_tokens=16))


def test_the_editor_boxes_drive_the_findings_list(demo: gr.Blocks) -> None:
    listeners = [f for f in demo.fns.values() if getattr(f.fn, "__qualname__", "") == "Handlers.findings_list"]
    triggers = set()
    for f in listeners:
        assert [getattr(c, "elem_id", None) for c in f.inputs] == ["findings", "impression"]
        assert [c.elem_id for c in f.outputs] == ["findings-list"]
        assert f.trigger_mode == "always_last"
        triggers |= {(demo.blocks[block_id].elem_id, event) for block_id, event in f.targets}
    assert triggers == {("findings", "change"), ("impression", "change")}
    shown = listeners[0].fn("The lungs are clear.", "")
    assert "Pleural Effusion" not in shown
    shown = listeners[0].fn("The lungs are clear. There is a small left pleural effusion.", "No pneumothorax.")
    statuses = dict(re.findall(r"<td[^>]*>([^<]+)</td><td[^>]*>(\w+)</td>", shown))
    assert statuses["Pleural Effusion"] == "present" and statuses["Pneumothorax"] == "absent"


def test_a_stored_draft_gives_its_pieces_or_each_block_at_its_lowest() -> None:
    draft = SimpleNamespace(settings={"prefix": "Findings: kept."}, trace=[
        {"text": "A pleural", "confidences": [0.9, 0.5], "pieces": [["A", 0.9], [" pleural", 0.5]]},
        {"text": " effusion.", "confidences": [0.99, 0.8]},  # stored before pieces were kept
    ])
    pieces = _trace_pieces(draft)  # type: ignore[arg-type]
    assert pieces == [("Findings: kept. ", None), ("A", 0.9), (" pleural", 0.5), (" effusion.", 0.8)]


def test_the_draft_stream_shows_sentences_with_the_block_being_written(tmp_path_factory, model_dir: Path) -> None:
    root = tmp_path_factory.mktemp("evidence-stream")
    settings = AppSettings(models=(str(model_dir),), data_dir=root / "data", upload_cache_dir=root / "cache",
                           max_new_tokens=12)
    h = Handlers(Services.create(settings))
    folder = settings.upload_cache_dir / "u"
    folder.mkdir(parents=True)
    synthetic_cxr(3, (120, 100)).save(folder / "frontal.png")
    updates: list[tuple[Any, ...]] = list(h.generate([str(folder / "frontal.png")], "", "en", "", "echo", 12,
                                                     0.7, 0.85, 5, ""))
    assert all("▒" in u[F["evidence"]] for u in updates[:-1]) and "▒" not in updates[-1][F["evidence"]]
    final = updates[-1][F["evidence"]]
    draft = h.store.get_draft(updates[-1][F["draft_id"]], "local")
    assert all("pieces" in block for block in draft.trace)
    # reopening the stored draft shows the same sentence view as the end of the stream
    assert h.open_draft(draft.id)[F["evidence"]] == final
    if draft.report.strip():
        assert "echo-sentence" in final

"""Report text: split "Findings: ... Impression: ..." (EN/ZH) and build the reference format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_model.data.report_text import SECTION_KEYWORDS, ParsedReport, format_report, parse_report

KEYWORDS = [word for words in SECTION_KEYWORDS.values() for word in words]


def _free_of_keywords(text: str) -> bool:
    lowered = text.lower()
    return not any(word in lowered for word in KEYWORDS)


section_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80).filter(
    _free_of_keywords
)


@pytest.mark.parametrize(
    ("text", "findings", "impression"),
    [
        (
            "Findings: The lungs are clear. Impression: No acute disease.",
            "The lungs are clear.",
            "No acute disease.",
        ),
        ("findings: clear impression: normal", "clear", "normal"),
        ("FINDINGS:\n  Lungs clear.\n\nIMPRESSION:\n  Normal chest.\n", "Lungs clear.", "Normal chest."),
        ("FINDINGS\nLungs clear.\nIMPRESSION\nNormal.", "Lungs clear.", "Normal."),
        ("Findings : clear. Impression : normal.", "clear.", "normal."),
        ("Finding: one nodule. Impressions: see CT.", "one nodule.", "see CT."),
        ("Impression: No acute process.", "", "No acute process."),
        ("Findings: Mild cardiomegaly.", "Mild cardiomegaly.", ""),
        ("Heart size normal. Impression: normal.", "Heart size normal.", "normal."),
        ("EXAM: CHEST PA. Findings: clear. Impression: normal.", "clear.", "normal."),
        ("The lungs are clear.", "The lungs are clear.", ""),
        ("", "", ""),
        ("Findings: a. Findings: b. Impression: c.", "a. b.", "c."),
        ("No findings of note; no effusion.", "No findings of note; no effusion.", ""),
        ("所见：两肺纹理清晰。 结论：心肺未见异常。", "两肺纹理清晰。", "心肺未见异常。"),
        ("所见:两肺清晰 结论:未见异常", "两肺清晰", "未见异常"),
        ("影像所见：双肺纹理增多。\n诊断结论：支气管炎。", "双肺纹理增多。", "支气管炎。"),
        ("所见\n两肺清晰\n结论\n正常", "两肺清晰", "正常"),
        ("FINDINGS\r\nLungs clear.\r\nIMPRESSION\r\nNormal.\r\n", "Lungs clear.", "Normal."),
        ("Impression: normal. Findings: clear.", "clear.", "normal."),
    ],
)
def test_parse_report_examples(text: str, findings: str, impression: str) -> None:
    assert parse_report(text) == ParsedReport(findings=findings, impression=impression)


def test_keyword_inside_a_word_is_not_a_header() -> None:
    assert parse_report("Nofindings: x") == ParsedReport(findings="Nofindings: x", impression="")


def test_non_ascii_lookalike_letters_are_not_headers() -> None:
    text = "Findings: a \u0130mpression: b"  # dotted capital I is not the ASCII letter
    assert parse_report(text) == ParsedReport(findings="a \u0130mpression: b", impression="")


@pytest.mark.parametrize(
    ("lang", "expected"),
    [("en", "Findings: Lungs clear. Impression: Normal."), ("zh", "所见：Lungs clear. 结论：Normal.")],
)
def test_format_report_reference_format(lang: str, expected: str) -> None:
    assert format_report("  Lungs clear. ", "Normal.\n", lang=lang) == expected  # type: ignore[arg-type]


def test_format_report_rejects_unknown_language() -> None:
    with pytest.raises(ValueError, match="'fr'"):
        format_report("a", "b", lang="fr")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["x. Impression: y", "IMPRESSION:\ny", "a 结论：b", "Findings: again"])
def test_format_report_rejects_sections_containing_headers(bad: str) -> None:
    with pytest.raises(ValueError, match="section header") as info:
        format_report(bad, "ok")
    assert repr(bad) in str(info.value)


def test_format_report_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="impression must be str"):
        format_report("a", None)  # type: ignore[arg-type]


def test_parsed_report_to_text() -> None:
    assert ParsedReport("a", "b").to_text("zh") == "所见：a 结论：b"


def test_parse_report_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="bytes"):
        parse_report(b"Findings: x")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(findings=section_text, impression=section_text, lang=st.sampled_from(["en", "zh"]))
def test_format_then_parse_round_trips(findings: str, impression: str, lang: str) -> None:
    text = format_report(findings, impression, lang=lang)  # type: ignore[arg-type]
    assert parse_report(text) == ParsedReport(findings=findings.strip(), impression=impression.strip())


@settings(max_examples=200, deadline=None)
@given(findings=st.text(max_size=60), impression=st.text(max_size=60))
def test_format_either_refuses_or_round_trips(findings: str, impression: str) -> None:
    try:
        text = format_report(findings, impression)
    except ValueError:
        return
    assert parse_report(text) == ParsedReport(findings=findings.strip(), impression=impression.strip())


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(
        st.one_of(
            st.text(max_size=8),
            st.sampled_from(
                ["Findings:", "IMPRESSION", "impression：", "所见：", "诊断结论", "\n", ":", "：", " "]
            ),
        ),
        max_size=20,
    ).map("".join)
)
def test_parse_never_raises_and_sections_come_from_the_text(text: str) -> None:
    parsed = parse_report(text)
    assert isinstance(parsed.findings, str) and isinstance(parsed.impression, str)
    for section in (parsed.findings, parsed.impression):
        for piece in section.split(" "):
            assert piece in text

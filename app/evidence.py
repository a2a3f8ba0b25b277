"""Evidence beside the draft: the draft sentence by sentence with its weakest token, and the findings it asserts.

Pure functions (no Gradio, no store): the Draft tab's callbacks in :mod:`app.handlers` call them and show the
HTML they return.

* :func:`sentence_evidence` joins the committed tokens (display pieces with the probability each had when it
  was committed) into sentences and words. A sentence's probability is the **lowest** of its tokens', so one
  uncertain word flags the whole sentence; a word's probability is the lowest of the subword pieces it is
  made of. Text the model did not write (the clinician's kept text of a re-draft) has no probability.
* :func:`asserted_findings` labels the editor's text with the library's CheXpert labeler
  (:mod:`echo_model.labeler`): present / uncertain / absent per observation the text mentions.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from echo_model.labeler import OBSERVATIONS, Label, label_report

from .service import CONFIDENCE_BANDS, confidence_band

__all__ = [
    "EVIDENCE_COLOURS",
    "UNDERLINE_BELOW",
    "Finding",
    "Segment",
    "Sentence",
    "asserted_findings",
    "evidence_html",
    "findings_html",
    "sentence_evidence",
]

#: Words (and punctuation) whose probability is below this are underlined: the lower bound of ``high``, so
#: every sentence that is not high has its weakest words marked.
UNDERLINE_BELOW: float = dict(CONFIDENCE_BANDS)["high"]
#: (background, underline / border) colour per class of a sentence.
EVIDENCE_COLOURS: dict[str, tuple[str, str]] = {
    "high": ("#e3f1e4", "#2e7d32"),
    "medium": ("#fdf0c8", "#b26a00"),
    "low": ("#f9d9d7", "#c62828"),
    "kept": ("#e3ecf7", "#1565c0"),
}
_STATUS = {Label.POSITIVE: "present", Label.UNCERTAIN: "uncertain", Label.NEGATIVE: "absent"}
_STATUS_COLOURS = {"present": "#c62828", "uncertain": "#b26a00", "absent": "#2e7d32"}
# A sentence ends after . ! ? (followed by white space or the end: not the point of "1.5 cm"), after a CJK
# full stop, or at a line break (the findings are one line per region).
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？；]|\n")
# A word: one CJK character, or letters/digits joined by an apostrophe or hyphen ("left-sided", "don't").
_WORD = re.compile(r"[\u3400-\u9fff]|[^\W_]+(?:['’-][^\W_]+)*")


@dataclass(frozen=True)
class Segment:
    """A piece of a sentence: a word, a punctuation mark, or the white space between them.

    ``probability`` is the lowest probability of the tokens it is made of (``None``: white space, or text the
    model did not write).
    """

    text: str
    probability: float | None
    word: bool

    def uncertain(self, below: float = UNDERLINE_BELOW) -> bool:
        """Whether to underline it: a word or mark written with probability under ``below``."""
        return self.probability is not None and self.probability < below and bool(self.text.strip())


@dataclass(frozen=True)
class Sentence:
    """One sentence of the draft, with the white space before it (shown uncoloured)."""

    lead: str
    segments: tuple[Segment, ...]
    probability: float | None  # lowest token probability of the sentence; None: no token of the model's

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def band(self) -> str:
        """``high`` / ``medium`` / ``low`` by :data:`~app.service.CONFIDENCE_BANDS`; ``kept`` for kept text."""
        return "kept" if self.probability is None else confidence_band(self.probability)

    @property
    def words(self) -> list[Segment]:
        return [s for s in self.segments if s.word]


@dataclass(frozen=True)
class Finding:
    """An observation the report mentions and what it says of it (``present``, ``uncertain`` or ``absent``)."""

    observation: str
    status: str


def _lowest(probabilities: Sequence[float | None]) -> float | None:
    known = [p for p in probabilities if p is not None]
    return min(known) if known else None


def _segments(text: str, probs: Sequence[float | None]) -> tuple[Segment, ...]:
    """Words, single marks and white space of one sentence; ``probs`` has one entry per character."""
    out: list[Segment] = []
    pos = 0

    def marks(end: int) -> None:  # the characters between two words: spaces (no probability) and marks
        nonlocal pos
        for i in range(pos, end):
            char = text[i]
            space = char.isspace()
            if out and space and not out[-1].word and out[-1].probability is None:
                out[-1] = Segment(out[-1].text + char, None, False)
            else:
                out.append(Segment(char, None if space else probs[i], False))
        pos = end

    for match in _WORD.finditer(text):
        marks(match.start())
        out.append(Segment(match.group(), _lowest(probs[match.start():match.end()]), True))
        pos = match.end()
    marks(len(text))
    return tuple(out)


def sentence_evidence(pieces: Sequence[tuple[str, float | None]]) -> list[Sentence]:
    """The draft's sentences, each with its lowest token probability and its words with theirs.

    Args:
        pieces: the report in order as ``(text, probability)``, one per committed token (a token that ends
            inside a character is merged with the next, with the lower probability), ``None`` for text the
            model did not write. Probabilities are in 0..1.

    Returns:
        The sentences in order; the white space before each is its ``lead``. A sentence's probability is the
        minimum over the tokens that wrote a visible character of it.
    """
    chars: list[str] = []
    probs: list[float | None] = []  # one per character
    for text, probability in pieces:
        if probability is not None and not -1e-6 <= probability <= 1.0 + 1e-6:  # float32 rounding allowed
            raise ValueError(f"a token probability is between 0 and 1, got {probability!r} for {text!r}")
        chars.append(text)
        probs.extend([probability] * len(text))
    text = "".join(chars)
    sentences: list[Sentence] = []
    start = gap = 0  # gap: where the white space before the next sentence begins
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    for end in [*ends, len(text)]:
        if end <= start:
            continue
        part = text[start:end]
        body = part.strip()
        if body:
            lo = start + part.index(body)
            hi = lo + len(body)
            visible = [p for c, p in zip(text[lo:hi], probs[lo:hi]) if not c.isspace()]
            sentences.append(Sentence(lead=text[gap:lo], segments=_segments(body, probs[lo:hi]),
                                      probability=_lowest(visible)))
            gap = hi
        start = end
    return sentences


def evidence_html(sentences: Sequence[Sentence], *, pending: int = 0, below: float = UNDERLINE_BELOW) -> str:
    """The sentences as HTML: each tinted by its class, uncertain words underlined, a legend above.

    Args:
        sentences: from :func:`sentence_evidence`.
        pending: positions of the block being written (shown as grey ``▒``; 0 once the draft is finished).
        below: words under this probability are underlined.
    """
    if not sentences and not pending:
        return ""
    bounds = dict(CONFIDENCE_BANDS)
    legend = " ".join(
        f'<span style="background:{EVIDENCE_COLOURS[band][0]};border-bottom:2px solid {EVIDENCE_COLOURS[band][1]};'
        f'padding:0 4px">{html.escape(label)}</span>'
        for band, label in (("high", f"high ≥ {bounds['high']:g}"), ("medium", f"medium ≥ {bounds['medium']:g}"),
                            ("low", f"low < {bounds['medium']:g}"), ("kept", "your kept text")))
    parts = [(f'<div class="echo-evidence-legend" style="font-size:0.85em;margin-bottom:6px"><strong>The draft as '
              f'the model wrote it, by sentence.</strong> Sentence colour = its '
              f'lowest token probability: {legend}; <u>underlined</u> = a word below {below:g}.</div>'),
             '<div class="echo-evidence-text" style="white-space:pre-wrap;line-height:1.7">']
    for sentence in sentences:
        back, line = EVIDENCE_COLOURS[sentence.band]
        title = ("text kept from your edit" if sentence.probability is None
                 else f"lowest token probability {sentence.probability:.2f}")
        parts.append(html.escape(sentence.lead))
        parts.append(f'<span class="echo-sentence echo-{sentence.band}" data-probability="'
                     f'{"" if sentence.probability is None else f"{sentence.probability:.4f}"}" title="{title}" '
                     f'style="background:{back};border-radius:3px;padding:1px 0">')
        for seg in sentence.segments:
            if seg.uncertain(below):
                parts.append(f'<u class="echo-uncertain" title="probability {seg.probability or 0.0:.2f}" '
                             f'style="text-decoration:underline {line};text-decoration-thickness:2px;'
                             f'text-underline-offset:3px">{html.escape(seg.text)}</u>')
            else:
                parts.append(html.escape(seg.text))
        parts.append("</span>")
    if pending:
        parts.append(f' <span class="echo-pending" style="color:#777">{"▒" * pending}</span>')
    parts.append("</div>")
    return "".join(parts)


def asserted_findings(findings: str, impression: str) -> list[Finding]:
    """The observations the report text mentions, present first, then uncertain, then absent.

    Labels findings and impression together (one report), as CheXpert labels a report; "No Finding" is listed
    only when the labeler sets it.
    """
    labels = label_report(f"{findings or ''}\n{impression or ''}")
    order = {status: i for i, status in enumerate(_STATUS.values())}
    rows = [Finding(name, _STATUS[labels[name]]) for name in OBSERVATIONS if name in labels]
    return sorted(rows, key=lambda row: order[row.status])


def findings_html(rows: Sequence[Finding]) -> str:
    """A compact table of :func:`asserted_findings` (a line saying so when the text mentions none)."""
    head = ('<div class="echo-findings-list"><div style="font-weight:600;margin-bottom:4px">Findings the text '
            'asserts</div>')
    if not rows:
        return (head + '<div class="echo-no-findings" style="color:#666">No observation mentioned yet (the labeler '
                'reads English reports).</div></div>')
    body = "".join(
        f'<tr class="echo-finding" data-status="{row.status}"><td style="padding:1px 8px 1px 0">'
        f'{html.escape(row.observation)}</td><td style="color:{_STATUS_COLOURS[row.status]};font-weight:600">'
        f"{row.status}</td></tr>" for row in rows)
    return (head + f'<table style="font-size:0.9em;border-collapse:collapse">{body}</table>'
            '<div style="font-size:0.8em;color:#666;margin-top:4px">Rule-based CheXpert labels of the text as '
            "it is now; a reading aid, not a diagnosis.</div></div>")

"""Explanations of a stored draft: which part to explain, computing (once) and storing, drawing the overlay.

The draft row holds everything needed to re-create the decode states: the model and sampler, the prompt
settings (language, indication, a re-draft's kept text) and, per block, the committed tokens with their commit
steps. An explanation is computed on demand, stored with the draft (deleted with the study) and answered from the
store the next time; colour map and opacity only change the drawing, never the computation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .service import DraftingService, load_study_images
from .store import DraftInfo, ExplanationInfo, Store

__all__ = ["COLORMAPS", "ColourScale", "ExplainService", "Target", "colour_bar_html", "draw_overlay",
           "explain_targets", "explanation_key", "render_overlay", "select_tokens"]

#: Perceptually uniform colour maps first (they do not invent edges); ``jet`` for those used to it.
COLORMAPS: tuple[str, ...] = ("inferno", "magma", "viridis", "plasma", "jet")
#: Values below this share of the clipped maximum are left transparent (bones and devices stay untinted).
HIDE_BELOW = 0.2
_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+")


@dataclass(frozen=True)
class Target:
    """What to explain: a block (``block``, index) or a sentence (``sentence``, index) of the generated text."""

    kind: str
    index: int

    @classmethod
    def parse(cls, value: str) -> Target:
        kind, _, number = (value or "").strip().partition(":")
        if kind not in ("block", "sentence") or not number.strip().isdigit():
            raise ValueError(f"choose what to explain as 'block:N' or 'sentence:N', got {value!r}")
        return cls(kind, int(number))

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"


def _report_tokens(draft: DraftInfo, eos_token_id: int) -> list[int]:
    """The generated tokens that made it into the report (up to, not including, ``<eos>``)."""
    flat = [int(t) for block in draft.trace for t in block["token_ids"]]
    limit = int(draft.settings.get("max_new_tokens") or len(flat))
    flat = flat[:limit]
    return flat[: flat.index(eos_token_id)] if eos_token_id in flat else flat


def _token_spans(decode: Callable[[list[int]], str], tokens: Sequence[int]) -> list[tuple[int, int]]:
    """Character span of each token in the decoded text (a token inside a multi-byte character gets width 0)."""
    spans, previous = [], 0
    for j in range(len(tokens)):
        text = decode(list(tokens[: j + 1]))
        end = len(text.rstrip("\ufffd"))
        spans.append((previous, max(previous, end)))
        previous = max(previous, end)
    return spans


def explain_targets(draft: DraftInfo, decode: Callable[[list[int]], str], eos_token_id: int) -> list[tuple[str, str]]:
    """Dropdown choices ``(label, "block:N" | "sentence:N")``: every block, then every sentence, with its text."""
    choices: list[tuple[str, str]] = []
    tokens = _report_tokens(draft, eos_token_id)
    kept = len(tokens)
    start = 0
    for k, block in enumerate(draft.trace):
        n = len(block["token_ids"])
        if start < kept:
            choices.append((f"block {k}: {block['text'].strip()[:60]}", f"block:{k}"))
        start += n
    for i, (_, _, sentence) in enumerate(_sentences(decode(tokens))):
        choices.append((f"sentence {i}: {sentence[:70]}", f"sentence:{i}"))
    return choices


def _sentences(text: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of each sentence of ``text``."""
    out, pos = [], 0
    for part in _SENTENCE_END.split(text):
        start = text.index(part, pos) if part else pos
        if part.strip():
            out.append((start, start + len(part), part.strip()))
        pos = start + len(part)
    return out


def select_tokens(draft: DraftInfo, target: Target, decode: Callable[[list[int]], str], eos_token_id: int) -> list[int]:
    """Indices (in the generated response) of the report tokens a target covers."""
    tokens = _report_tokens(draft, eos_token_id)
    if target.kind == "block":
        if not 0 <= target.index < len(draft.trace):
            raise ValueError(f"block {target.index} does not exist: this draft has {len(draft.trace)} blocks")
        start = sum(len(b["token_ids"]) for b in draft.trace[: target.index])
        chosen = [j for j in range(start, start + len(draft.trace[target.index]["token_ids"])) if j < len(tokens)]
        if not chosen:
            raise ValueError(f"block {target.index} holds no report text (it only ends the report)")
        return chosen
    sentences = _sentences(decode(tokens))
    if not 0 <= target.index < len(sentences):
        raise ValueError(f"sentence {target.index} does not exist: this draft has {len(sentences)} sentences")
    lo, hi, _ = sentences[target.index]
    spans = _token_spans(decode, tokens)
    chosen = [j for j, (a, b) in enumerate(spans) if b > lo and a < hi and b > a]
    if not chosen:
        raise ValueError(f"sentence {target.index} has no tokens of its own")
    return chosen


def explanation_key(target: Target | str, method: str, *, n_steps: int = 32, baseline: str = "blur") -> str:
    """The cache key of an explanation: target, method and the settings that change its result."""
    settings = f"|{n_steps}|{baseline}" if method == "integrated_gradients" else ""
    return f"{target}|{method}{settings}"


class ExplainService:
    """Computes explanations of stored drafts with the drafting models, and keeps them with the drafts."""

    def __init__(self, drafting: DraftingService, store: Store):
        self.drafting = drafting
        self.store = store

    def choices(self, draft_id: str, actor: str) -> list[tuple[str, str]]:
        draft = self.store.get_draft(draft_id, actor)
        processor = self._checkpoint(draft).processor
        return explain_targets(draft, self._decoder(processor), processor.eos_token_id)

    def explain(self, draft_id: str, actor: str, *, target: str, method: str, n_steps: int = 32,
                baseline: str = "blur") -> ExplanationInfo:
        """The stored explanation of ``target`` with ``method``, computed and stored first if needed."""
        from echo_model.explain import ExplainConfig, Explainer, decode_states

        config = ExplainConfig(method=method, n_steps=int(n_steps), baseline=baseline)  # type: ignore[arg-type]
        parsed = Target.parse(target)
        key = explanation_key(parsed, config.method, n_steps=config.n_steps, baseline=config.baseline)
        cached = self.store.get_explanation(draft_id, actor, key)
        if cached is not None:
            return cached
        draft = self.store.get_draft(draft_id, actor)
        study = self.store.get_study(draft.study_id, actor)
        images = load_study_images(study)
        drafter = self.drafting.drafter(draft.settings.get("model_label") or None)
        ck, prompt = drafter.prompt(images, sampler=draft.sampler, indication=draft.settings.get("indication"),
                                    lang=draft.language, prefix=draft.settings.get("prefix"))
        processor = ck.processor
        select = select_tokens(draft, parsed, self._decoder(processor), processor.eos_token_id)
        blocks = [b["token_ids"] for b in draft.trace]
        from echo_model.sampling import sampler_spec

        steps = None
        spec = sampler_spec(draft.sampler)
        if spec.multi_step:
            if any(b.get("steps") is None for b in draft.trace):
                raise ValueError("this teacher draft has no recorded commit steps: generate it again to explain it")
            steps = [b["steps"] for b in draft.trace]
        states = decode_states(prompt.input_ids, blocks, kind=spec.kind,
                               block_length=ck.spec.block_length, mask_token_id=processor.mask_token_id,
                               select=select, steps=steps)
        result = Explainer(ck.model, processor).explain(prompt, states, images=images, config=config)
        return self.store.add_explanation(
            draft_id, actor, key=key, method=result.method, label=result.label, detail=result.detail,
            seconds=result.seconds, maps=[np.round(m, 6).tolist() for m in result.maps])

    def _checkpoint(self, draft: DraftInfo) -> Any:
        return self.drafting.drafter(draft.settings.get("model_label") or None).checkpoint(draft.sampler)

    @staticmethod
    def _decoder(processor: Any) -> Callable[[list[int]], str]:
        return lambda ids: str(processor.tokenizer.decode(ids, skip_special_tokens=True))


@dataclass(frozen=True)
class ColourScale:
    """What the overlay's colours mean, for its colour bar.

    Attributes:
        colormap: the colour map's name.
        top: the value drawn at full colour (the 99th percentile of the interpolated map; higher is clipped), in
            the map's unit: the share of the whole explanation (all views together sum to 1) per image patch.
        patch_px: (width, height) of one patch on the shown view, in pixels.
    """

    colormap: str
    top: float
    patch_px: tuple[float, float]

    @property
    def hidden_below(self) -> float:
        """Values under this are left untinted."""
        return HIDE_BELOW * self.top


def draw_overlay(image: Image.Image, heat: Sequence[Sequence[float]], *, colormap: str = "inferno",
                 opacity: float = 0.45) -> tuple[Image.Image, ColourScale]:
    """The grey view with the map drawn over it, and the scale of its colours.

    The patch map is interpolated to the view's pixels (bicubic, :func:`echo_model.explain.upsample`), clipped
    at its 99th percentile, and values under :data:`HIDE_BELOW` of that are left transparent; elsewhere the
    colour's opacity grows with the value up to ``opacity``.

    Args:
        image: the stored (de-identified, display-windowed) view.
        heat: its ``(grid_h, grid_w)`` patch map.
        colormap: a name from :data:`COLORMAPS`.
        opacity: 0..1, the overlay's opacity where the map is strongest.
    """
    import matplotlib

    from echo_model.explain import upsample

    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colour map {colormap!r}; choose one of {list(COLORMAPS)}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
    grey = image.convert("L")
    grid = np.asarray(heat, dtype=np.float32)  # (gh, gw)
    values = upsample(grid, grey.size)  # (H, W)
    top = float(np.percentile(values, 99)) or float(values.max()) or 1.0
    scaled = np.clip(values / top, 0.0, 1.0)
    colours = matplotlib.colormaps[colormap](scaled)[..., :3]  # (H, W, 3)
    alpha = np.where(scaled >= HIDE_BELOW, scaled, 0.0)[..., None] * opacity  # (H, W, 1)
    base = np.asarray(grey.convert("RGB"), dtype=np.float32) / 255.0
    out = base * (1.0 - alpha) + colours * alpha
    patch_px = (grey.size[0] / grid.shape[1], grey.size[1] / grid.shape[0])
    return (Image.fromarray((out * 255.0).round().astype(np.uint8), mode="RGB"),
            ColourScale(colormap=colormap, top=top, patch_px=patch_px))


def render_overlay(image: Image.Image, heat: Sequence[Sequence[float]], *, colormap: str = "inferno",
                   opacity: float = 0.45) -> Image.Image:
    """The overlay of :func:`draw_overlay` without its scale."""
    return draw_overlay(image, heat, colormap=colormap, opacity=opacity)[0]


def colour_bar_html(scale: ColourScale, *, stops: int = 11) -> str:
    """A colour bar for the overlay: the colour map from the untinted threshold to the clipped top, with ticks
    in percent of the whole explanation per patch, and a caption saying what the numbers are."""
    import matplotlib

    if stops < 2:
        raise ValueError(f"a colour bar needs at least 2 stops, got {stops}")
    cmap = matplotlib.colormaps[scale.colormap]
    hidden = 100.0 * HIDE_BELOW
    gradient = ["#d9d9d9 0%", f"#d9d9d9 {hidden:.0f}%"]
    for i in range(stops):
        v = HIDE_BELOW + (1.0 - HIDE_BELOW) * i / (stops - 1)
        gradient.append(f"{matplotlib.colors.to_hex(cmap(v))} {100.0 * v:.1f}%")
    ticks = "".join(
        f'<span class="echo-colorbar-tick" style="position:absolute;left:{100.0 * f:.0f}%;white-space:nowrap;'
        f'transform:translateX({-100.0 * f:.0f}%)">{"≥ " if f == 1.0 else ""}{_percent(f * scale.top)}</span>'
        for f in (0.0, HIDE_BELOW, 0.5, 1.0))
    w, h = scale.patch_px
    return (f'<div class="echo-colorbar" data-top="{scale.top:.6g}" style="max-width:520px;font-size:0.85em">'
            f'<div class="echo-colorbar-bar" style="height:14px;border:1px solid #888;border-radius:2px;'
            f'background:linear-gradient(to right, {", ".join(gradient)})"></div>'
            f'<div style="position:relative;height:1.4em">{ticks}</div>'
            f'<div class="echo-colorbar-caption">Colour = share of this explanation per image patch '
            f"(one patch ≈ {w:.0f}×{h:.0f} px of this view; all views together = 100%), 0 – {_percent(scale.top)}; "
            f"brighter patches are clipped at the top, those under {_percent(scale.hidden_below)} (grey) are left "
            "untinted, and the tint grows more opaque with the value.</div></div>")


def _percent(share: float) -> str:
    """A share as a percentage with enough digits for small values (0.0412 -> "4.12%", 0.000123 -> "0.0123%")."""
    if share <= 0:
        return "0%"
    return f"{100.0 * share:.3g}%"

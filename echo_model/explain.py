"""Why did the model write this block? Attention and Captum attributions of committed tokens to image patches.

A block-diffusion model predicts tokens *in place* at masked positions, with bidirectional context inside the
block, and its decoding is a custom loop; Captum's ``LLMAttribution`` assumes a left-to-right model that scores
shifted next-token logits and calls ``generate``, so it does not fit. Instead every committed token is scored in
the **decode state it was committed in** (method.md §2 / Algorithm 1):

* ECHO and vanilla (one step per block): everything before the block committed, the whole block masked;
* the teacher (multi-step): a token committed at step s sees the block's tokens committed at steps < s and masks
  elsewhere — one state per step, from the commit steps the sampler records;
* AR: the causal prefix, the token read off the previous position's logits.

A state is rebuilt as one cache-free forward under the block-causal mask, which equals the cached sampler's
forward (the parity tests check this). Two explanations are offered:

``attention``
    Gradient-weighted attention rollout (Chefer et al., 2021) from the scored tokens' query rows to the
    ``<|image_pad|>`` tokens. One forward and a text-only backward. Each image token is one merged 2x2 patch, in
    row-major order of the merged grid. Attention shows where the model *looked*; a model may also select
    information through its value vectors, so it can point away from the evidence: on converged toys whose
    answer depends on one image quadrant only it sometimes put most of the map elsewhere, so
    :data:`RELIABILITY` marks it not reliable (docs/explain.md, the quadrant sweep).
``integrated_gradients``
    Captum ``LayerIntegratedGradients`` on the output of the vision tower's last block (patch resolution), from
    a blurred copy of the image (baseline) to the image, of the summed log-probability of the scored tokens.
    The tower runs its blocks on patches permuted into attention windows (``window_index``) with each 2x2 merge
    unit contiguous; the tap below undoes both so that attributions land on the right pixels.
Maps are returned per image at patch resolution ``(grid_h, grid_w)``, non-negative and summing to 1 over the
study. They show where the model looked, not where the disease is.

:data:`RELIABILITY` records, per method, whether it localised the quadrant a toy's answer depended on across the
sweep (``scripts/explain_quadrant_sweep.py``); :data:`DEFAULT_METHOD` is the reliable one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter
from transformers.vision_utils import get_vision_window_index

from .masks import block_causal_mask, to_attention_bias
from .modeling import EchoModel
from .processing import EchoProcessor, StudyPrompt

__all__ = [
    "DEFAULT_METHOD", "METHODS", "RELIABILITY", "DecodeState", "ExplainConfig", "Explainer", "Explanation",
    "MethodReliability", "decode_states", "patch_order", "quadrant_mass", "reliability", "upsample",
]

Method = Literal["attention", "integrated_gradients"]
#: Explanation methods, cheapest first.
METHODS: tuple[str, ...] = ("attention", "integrated_gradients")
METHOD_LABELS: dict[str, str] = {
    "attention": "Gradient-weighted attention rollout to image patches",
    "integrated_gradients": "Captum LayerIntegratedGradients on the vision tower's last block",
}


@dataclass(frozen=True)
class MethodReliability:
    """Whether a method's maps can be trusted, as measured by the quadrant sweep.

    ``scripts/explain_quadrant_sweep.py`` trains toys whose answer depends on one quadrant of the image only
    (4 quadrants x torch threads 1, 2, 4 x training seeds, each checked to have converged: its answer flips
    with the quadrant's brightness and ignores the other quadrants) and measures each method's share of the map
    in that quadrant (docs/explain.md, ``results/explain_quadrant_sweep.json``).

    Attributes:
        reliable: the method put >= 80 % of its mass in the quadrant on at least 90 % of the sweep's images
            (the figures are in ``evidence``; a reliable method can still miss on some model).
        note: one line for the user, shown next to the method (empty when reliable).
        evidence: the sweep's figures the verdict rests on.
    """

    reliable: bool
    note: str
    evidence: str


#: Per method, what the quadrant sweep found (see :class:`MethodReliability`); the app reads it.
RELIABILITY: dict[str, MethodReliability] = {
    "attention": MethodReliability(
        reliable=False,
        note=("not reliable for this model: on converged toys whose answer depends on one image quadrant only, "
              "attention rollout often put most of the map elsewhere; use integrated gradients"),
        evidence=("quadrant sweep, 20 converged toys x 3 images: share in the quadrant min 0.01, median 0.86, "
                  ">= 0.8 on 58% of images; 11 of 20 toys missed on some image"),
    ),
    "integrated_gradients": MethodReliability(
        reliable=True, note="",
        evidence=("quadrant sweep, 20 converged toys x 3 images: share in the quadrant min 0.89, median 1.00, "
                  ">= 0.8 on every image; with 4 converged toys trained on an Intel CPU, >= 0.8 on 68 of 72 images: "
                  "one of them (bottom_left, seed 1) got 0.08-0.12 on all 3 (docs/explain.md)"),
    ),
}
#: The method offered first: the most reliable one in the sweep.
DEFAULT_METHOD: str = "integrated_gradients"


def reliability(method: str) -> MethodReliability:
    """What the quadrant sweep found for ``method`` (one of :data:`METHODS`)."""
    if method not in RELIABILITY:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {list(METHODS)}")
    return RELIABILITY[method]


@dataclass(frozen=True)
class ExplainConfig:
    """How to explain.

    Attributes:
        method: one of :data:`METHODS` (default :data:`DEFAULT_METHOD`).
        n_steps: integration points of integrated gradients (Captum's Gauss-Legendre rule).
        internal_batch_size: states x steps evaluated per forward (memory bound).
        baseline: the "no information" image integrated gradients starts from: ``blur`` (the image blurred:
            keeps anatomy and overall brightness, removes detail) or ``black`` (removes everything).
        blur_radius: Gaussian blur radius of the ``blur`` baseline, in pixels of the image given.
    """

    method: Method = "integrated_gradients"  # DEFAULT_METHOD (a Literal default must be spelled out)
    n_steps: int = 32
    internal_batch_size: int = 4
    baseline: Literal["blur", "black"] = "blur"
    blur_radius: float = 16.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown explanation method {self.method!r}; choose one of {list(METHODS)}")
        if self.n_steps < 2:
            raise ValueError(f"n_steps must be >= 2, got {self.n_steps}")
        if self.internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be >= 1, got {self.internal_batch_size}")
        if self.baseline not in ("blur", "black"):
            raise ValueError(f"baseline must be 'blur' or 'black', got {self.baseline!r}")
        if self.blur_radius <= 0:
            raise ValueError(f"blur_radius must be > 0, got {self.blur_radius}")


@dataclass(frozen=True)
class DecodeState:
    """One decode state to re-create and the tokens committed in it.

    Attributes:
        tokens: ``(L,)`` the canvas: prompt, committed response tokens, mask ids where still masked.
        score_columns: ``(n,)`` column whose logits gave each scored token (its own column for block diffusion,
            the previous one for AR); also the attention query rows.
        target_ids: ``(n,)`` the committed tokens.
        block_length: b of the block-causal mask (1 = causal).
    """

    tokens: torch.Tensor
    score_columns: torch.Tensor
    target_ids: torch.Tensor
    block_length: int


@dataclass
class Explanation:
    """Per-image attribution maps of some committed tokens.

    Attributes:
        method: the method used.
        maps: one ``(grid_h, grid_w)`` float array per image (14-px patches), non-negative, summing to 1 overall.
        seconds: compute time.
        tokens: how many tokens were scored, over how many decode states.
        detail: what exactly was computed (layers/heads averaged, baseline, steps).
    """

    method: str
    maps: list[np.ndarray]
    seconds: float
    tokens: int
    states: int
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{METHOD_LABELS[self.method]} · {self.tokens} tokens · {self.seconds:.2f} s"


# ------------------------------------------------------------------------------------------- states
def decode_states(
    prompt_ids: torch.Tensor,
    blocks: Sequence[Sequence[int]],
    *,
    kind: Literal["ar", "block"],
    block_length: int,
    mask_token_id: int,
    select: Sequence[int],
    steps: Sequence[Sequence[int]] | None = None,
) -> list[DecodeState]:
    """The decode states in which the selected response tokens were committed.

    Args:
        prompt_ids: ``(P,)`` the prompt exactly as the sampler saw it (a re-draft's kept text included).
        blocks: the committed blocks' token ids, in order (as the sampler's :class:`BlockEvent` s gave them);
            generated token j sits at column ``P + j``.
        kind: ``"ar"`` (causal, next-token) or ``"block"`` (block diffusion, in place).
        block_length: b.
        mask_token_id: the ``<|MASK|>`` id.
        select: indices j of the response tokens to score.
        steps: per block, the 1-based denoising step at which each token was committed (the teacher);
            None = one step per block (ECHO, vanilla).
    Returns:
        One state per distinct (block, step) among the selected tokens (one state for AR).
    """
    flat = [int(t) for blk in blocks for t in blk]
    chosen = sorted({int(j) for j in select})
    if not chosen:
        raise ValueError("no token selected to explain")
    if chosen[0] < 0 or chosen[-1] >= len(flat):
        raise ValueError(f"selected token index out of range 0..{len(flat) - 1}: {chosen[0]}..{chosen[-1]}")
    P = int(prompt_ids.shape[0])
    response = torch.tensor(flat, dtype=torch.long)  # (G,)
    if kind == "ar":
        cols = torch.tensor(chosen) + P  # (n,)
        canvas = torch.cat([prompt_ids.long(), response[: chosen[-1] + 1]])  # (L,)
        return [DecodeState(canvas, cols - 1, response[chosen], 1)]
    if kind != "block":
        raise ValueError(f"kind must be 'ar' or 'block', got {kind!r}")
    if steps is not None and [len(s) for s in steps] != [len(b) for b in blocks]:
        raise ValueError("steps must give one commit step per token of every block")
    starts = np.cumsum([0] + [len(b) for b in blocks])  # response index of each block's first token
    step_of = [int(s) for blk in steps for s in blk] if steps is not None else [1] * len(flat)
    states: list[DecodeState] = []
    for k in range(len(blocks)):
        in_block = [j for j in chosen if starts[k] <= j < starts[k + 1]]
        for s in sorted({step_of[j] for j in in_block}):
            targets = [j for j in in_block if step_of[j] == s]
            canvas = torch.cat([prompt_ids.long(), response[: starts[k + 1]]])  # (L,) up to the block's end
            for j in range(int(starts[k]), int(starts[k + 1])):
                if step_of[j] >= s:  # not yet committed at step s (committed at s or later)
                    canvas[P + j] = mask_token_id
            cols = torch.tensor(targets) + P  # (n,)
            states.append(DecodeState(canvas, cols, response[targets], block_length))
    return states


# ------------------------------------------------------------------------------------------- patch order
def patch_order(image_grid_thw: torch.Tensor, *, merge_size: int, window_size: int, patch_size: int) -> torch.Tensor:
    """Where each patch of the vision tower's block outputs lies in the images.

    The processor emits patches merge-unit by merge-unit (each 2x2 unit contiguous, units row-major); the tower
    then permutes the units into attention windows (``get_vision_window_index``, the model's own function).

    Returns:
        ``order`` ``(N_patches,)`` long: ``order[g]`` is the row of the block output holding patch ``g``, where
        ``g`` enumerates each image's patches in row-major order of its ``(grid_h, grid_w)`` grid, images in
        sequence. ``block_output[order]`` is in image layout.
    """
    window_index, _ = get_vision_window_index(image_grid_thw.cpu(), spatial_merge_size=merge_size,
                                              window_size=window_size, patch_size=patch_size)
    unit = merge_size * merge_size
    # Grid index g of every processor-order patch p (unit u = p // unit, sub-position p % unit).
    grid_of_patch: list[int] = []
    offset = 0
    for t, gh, gw in image_grid_thw.tolist():
        mh, mw = gh // merge_size, gw // merge_size
        p = torch.arange(t * gh * gw)
        u, sub = p // unit, p % unit
        frame, u = u // (mh * mw), u % (mh * mw)
        row = (u // mw) * merge_size + sub // merge_size
        col = (u % mw) * merge_size + sub % merge_size
        grid_of_patch.extend((offset + frame * gh * gw + row * gw + col).tolist())
        offset += t * gh * gw
    grid_of_patch_t = torch.tensor(grid_of_patch)
    # Block-output row r holds processor patch window_index[r // unit] * unit + r % unit.
    rows = torch.arange(len(grid_of_patch))
    processor_patch = window_index[rows // unit] * unit + rows % unit  # (N,)
    grid_of_row = grid_of_patch_t[processor_patch]  # (N,)
    return torch.argsort(grid_of_row)  # order[g] = row holding patch g


# ------------------------------------------------------------------------------------------- explainer
class _Tap(torch.nn.Module):
    """Identity on ``(B, C, N_patches)`` vision activations in image layout: the layer Captum hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Explainer:
    """Explains committed tokens of a study with attention or Captum attributions (see module docstring)."""

    def __init__(self, model: EchoModel, processor: EchoProcessor):
        self.model = model
        self.processor = processor
        self._visual = model.model.model.visual
        self._tap = _Tap()
        self._batch = 1  # study copies in the current vision forward (set by each forward)

    # ------------------------------------------------------------------ public
    def explain(
        self,
        prompt: StudyPrompt,
        states: Sequence[DecodeState],
        *,
        images: Sequence[Image.Image],
        config: ExplainConfig = ExplainConfig(),
    ) -> Explanation:
        """Attribute the summed log-probability of the states' tokens to the study's image patches."""
        if prompt.pixel_values is None or prompt.image_grid_thw is None:
            raise ValueError("this study has no image to explain against (a text-only prompt)")
        if not states:
            raise ValueError("no decode state to explain")
        start = time.perf_counter()
        if config.method == "attention":
            patch_scores, detail = self._attention(prompt, states)
        else:
            patch_scores, detail = self._captum(prompt, states, images=images, config=config)
        maps = _split_maps(patch_scores, prompt.image_grid_thw)
        return Explanation(method=config.method, maps=maps, seconds=time.perf_counter() - start,
                           tokens=sum(int(s.target_ids.numel()) for s in states), states=len(states), detail=detail)

    @torch.no_grad()
    def state_logits(self, prompt: StudyPrompt, states: Sequence[DecodeState]) -> torch.Tensor:
        """Logits ``(n_all, V)`` at every state's score columns: what the sampler saw when it committed them."""
        ids, positions, bias = self._canvas(prompt, states)
        device = self.model.device
        feats = self.model.image_features(prompt.pixel_values.to(device), prompt.image_grid_thw.to(device))
        cols, owner, _ = self._targets(states)
        logits = self.model(ids, position_ids=positions, attention_bias=bias, cache=None,
                            image_features=feats.repeat(len(states), 1))  # (S, L, V)
        return logits[owner, cols]

    # ------------------------------------------------------------------ shared canvas
    def _canvas(self, prompt: StudyPrompt, states: Sequence[DecodeState]):
        """Right-padded batch of the states: ids ``(S, L)``, positions ``(3, S, L)``, bias ``(S, 1, L, L)``.

        Padding sits after every state's last block, so under the block-causal mask no scored row sees it.
        """
        device = self.model.device
        L = max(int(s.tokens.shape[0]) for s in states)
        S = len(states)
        ids = torch.full((S, L), self.processor.mask_token_id, dtype=torch.long)
        allow = torch.zeros(S, L, L, dtype=torch.bool)
        for i, s in enumerate(states):
            ids[i, : s.tokens.shape[0]] = s.tokens
            allow[i] = block_causal_mask(L, s.block_length)
        positions = self.model.sequence_positions(prompt, self.processor.image_token_id, L)  # (3, L)
        positions = positions[:, None].expand(3, S, L)
        bias = to_attention_bias(allow.to(device), self.model.dtype)  # (S, 1, L, L)
        return ids.to(device), positions.to(device), bias

    # ------------------------------------------------------------------ attention
    def _attention(self, prompt: StudyPrompt, states: Sequence[DecodeState]) -> tuple[torch.Tensor, str]:
        """Gradient-weighted attention rollout (Chefer et al., CVPR 2021) from the scored rows to the image tokens.

        Per layer, ``A_bar = mean_heads (A * dS/dA)^+`` keeps the part of each head's attention that the scored
        log-probability ``S`` used (raw head averages mix in heads looking elsewhere); the rollout
        ``R <- R + A_bar R`` (``R = I`` at the input) follows information through the layers, which matters
        because image tokens also attend to earlier image tokens under the causal prompt mask, so a late layer's
        attention to one image token can carry another's content. The image features are held fixed (no backward
        through the vision tower): one forward and a text-only backward.
        """
        ids, positions, bias = self._canvas(prompt, states)
        device = self.model.device
        with torch.no_grad():
            feats = self.model.image_features(prompt.pixel_values.to(device), prompt.image_grid_thw.to(device))
        S, L = ids.shape
        cols, owner, targets = self._targets(states)
        with torch.enable_grad():
            logits, attentions = self.model.forward_with_attentions(
                ids, position_ids=positions, attention_bias=bias, image_features=feats.repeat(S, 1))
            picked = logits.float().log_softmax(-1)[owner, cols, targets]  # (n_all,)
            grads = torch.autograd.grad(picked.sum(), attentions)
        image_cols = (ids[0] == self.processor.image_token_id).nonzero().flatten()  # (N_merged,)
        with torch.no_grad():
            rollout = torch.eye(L, device=device).expand(S, L, L).clone()  # (S, L, L)
            for a, g in zip(attentions, grads):
                a_bar = (a * g).float().clamp_min(0).mean(1)  # (S, L, L) heads averaged
                rollout = rollout + a_bar @ rollout
            relevance = rollout[owner, cols][:, image_cols].sum(0)  # (N_merged,)
        layers, heads = len(attentions), attentions[0].shape[1]
        detail = (f"gradient-weighted attention rollout of {len(cols)} token rows to {len(image_cols)} image tokens "
                  f"over {layers} layers x {heads} heads")
        return _merged_to_patches(relevance.cpu(), prompt.image_grid_thw, self.processor.merge_size), detail

    def _targets(self, states: Sequence[DecodeState]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flattened (score column, state index, token id) of every scored token, on the model's device."""
        device = self.model.device
        cols = torch.cat([s.score_columns for s in states]).to(device)  # (n_all,)
        owner = torch.cat([torch.full((len(s.score_columns),), i) for i, s in enumerate(states)]).to(device)
        targets = torch.cat([s.target_ids for s in states]).to(device)  # (n_all,)
        return cols, owner, targets

    # ------------------------------------------------------------------ captum
    def _captum(self, prompt: StudyPrompt, states: Sequence[DecodeState], *, images: Sequence[Image.Image],
                config: ExplainConfig) -> tuple[torch.Tensor, str]:
        from captum.attr import LayerIntegratedGradients

        device = self.model.device
        ids, positions, bias = self._canvas(prompt, states)
        grid = prompt.image_grid_thw.to(device)
        order = patch_order(prompt.image_grid_thw, merge_size=self._visual.spatial_merge_size,
                            window_size=self._visual.window_size, patch_size=self._visual.patch_size).to(device)
        cols, owner, targets = self._targets(states)
        scored_cols = torch.unique(cols)  # (n_cols,) the only logits needed
        col_index = torch.searchsorted(scored_cols, cols)  # (n_all,) each token's column among them
        S, n_patches = len(states), int(prompt.pixel_values.shape[0])

        def score(pixels: torch.Tensor) -> torch.Tensor:
            """(B, N_patches, F) study copies -> (B,) summed log-probability of the scored tokens."""
            B = pixels.shape[0]
            self._batch = B
            feats = self.model.image_features(pixels.reshape(B * n_patches, -1), grid.repeat(B, 1))  # (B*Nm, D)
            feats = feats.view(B, -1, feats.shape[-1])  # (B, Nm, D)
            image_rows = feats[:, None].expand(B, S, *feats.shape[1:]).reshape(-1, feats.shape[-1])  # (B*S*Nm, D)
            logits = self.model(
                ids.repeat(B, 1), position_ids=positions.repeat(1, B, 1), attention_bias=bias.repeat(B, 1, 1, 1),
                cache=None, image_features=image_rows, logits_at=scored_cols,
            )  # (B*S, n_cols, V)
            logp = logits.float().log_softmax(-1).view(B, S, logits.shape[1], -1)
            picked = logp[:, owner, col_index, targets]  # (B, n_all)
            return picked.sum(-1)  # (B,)

        pixels = prompt.pixel_values.to(device, self.model.dtype)[None]  # (1, N_patches, F)
        base = self._baseline(images, prompt, config=config).to(device, self.model.dtype)[None]
        with torch.enable_grad(), self._tapped(order):
            lig = LayerIntegratedGradients(score, self._tap)
            attr = lig.attribute(pixels, baselines=base, n_steps=config.n_steps,
                                 internal_batch_size=config.internal_batch_size)  # (1, C, N)
        scores = attr.sum(1).reshape(-1).abs()
        what = (f"the image blurred (Gaussian radius {config.blur_radius:g} px)" if config.baseline == "blur"
                else "a black image")
        detail = f"LayerIntegratedGradients, {config.n_steps} steps, baseline: {what}; |sum over channels| per patch"
        return scores.detach().float().cpu(), detail

    def _baseline(self, images: Sequence[Image.Image], prompt: StudyPrompt, *, config: ExplainConfig) -> torch.Tensor:
        """The reference study of integrated gradients, encoded like the study (same grid)."""
        if config.baseline == "blur":
            refs = [img.filter(ImageFilter.GaussianBlur(config.blur_radius)) for img in images]
        else:
            refs = [Image.new(img.mode, img.size) for img in images]  # all zeros: black
        base = self.processor.encode(refs).pixel_values
        if base is None or base.shape != prompt.pixel_values.shape:
            raise ValueError("the images given do not match the study's prompt (different number or sizes)")
        return base

    @contextlib.contextmanager
    def _tapped(self, order: torch.Tensor) -> Iterator[None]:
        """Route the last vision block's output through the tap, in image layout ``(B, C, N_patches)``.

        ``order`` is :func:`patch_order`: block-output rows -> image layout; the hook undoes it afterwards.
        """

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output  # (B*N, C) window order
            B = self._batch
            n = hidden.shape[0] // B
            grid = hidden.view(B, n, -1)[:, order].transpose(1, 2)  # (B, C, N) image layout
            tapped = self._tap(grid).transpose(1, 2)  # (B, N, C)
            restored = torch.empty_like(tapped)
            restored[:, order] = tapped
            new = restored.reshape(B * n, -1)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = self._visual.blocks[-1].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


# ------------------------------------------------------------------------------------------- maps
def _merged_to_patches(merged: torch.Tensor, image_grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Merged-token scores (row-major merged grids) -> patch scores (row-major patch grids), mass preserved."""
    out, offset = [], 0
    for t, gh, gw in image_grid_thw.tolist():
        mh, mw = gh // merge_size, gw // merge_size
        m = merged[offset: offset + t * mh * mw].view(t, mh, mw)
        patches = m.repeat_interleave(merge_size, 1).repeat_interleave(merge_size, 2) / merge_size**2  # (t, gh, gw)
        out.append(patches.reshape(-1))
        offset += t * mh * mw
    return torch.cat(out)


def _split_maps(patch_scores: torch.Tensor, image_grid_thw: torch.Tensor) -> list[np.ndarray]:
    """Patch scores of the study -> one ``(grid_h, grid_w)`` map per image, normalised to sum 1 overall."""
    scores = patch_scores.clamp_min(0).double()
    total = float(scores.sum())
    scores = scores / total if total > 0 else scores
    maps, offset = [], 0
    for t, gh, gw in image_grid_thw.tolist():
        n = t * gh * gw
        maps.append(scores[offset: offset + n].view(t, gh, gw).sum(0).numpy().astype(np.float32))
        offset += n
    return maps


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A patch map interpolated over an image of ``size`` (width, height) pixels: smooth, same mass.

    The processor resizes the whole image (no crop) to a multiple of 28 px, so the patch grid covers it exactly;
    each patch value is taken at its patch's centre. Bicubic interpolation (not patch-constant blocks, and no
    creases at the patch centres as with bilinear); its small undershoot below 0 is clipped and the result
    rescaled so that the mean value per patch area, hence every patch's share of the map, is kept.

    Args:
        heat: ``(grid_h, grid_w)`` non-negative patch map.
        size: ``(width, height)`` of the image in pixels.

    Returns:
        ``(height, width)`` float32 map in the units of ``heat`` (value per patch).
    """
    heat = np.asarray(heat, dtype=np.float32)  # (gh, gw)
    if heat.ndim != 2 or not heat.size:
        raise ValueError(f"a patch map is a non-empty (grid_h, grid_w) array, got shape {heat.shape}")
    img = Image.fromarray(heat, mode="F").resize(size, Image.BICUBIC)
    values = np.clip(np.asarray(img, dtype=np.float32), 0.0, None)  # (H, W)
    target = float(heat.sum()) * values.size / heat.size
    total = float(values.sum())
    return values * np.float32(target / total) if total > 0 else values


def quadrant_mass(heat: np.ndarray) -> dict[str, float]:
    """Share of a map's mass in each quadrant (``top_left``, ``top_right``, ``bottom_left``, ``bottom_right``)."""
    h, w = heat.shape
    total = float(heat.sum()) or 1.0
    return {
        "top_left": float(heat[: h // 2, : w // 2].sum()) / total,
        "top_right": float(heat[: h // 2, w // 2:].sum()) / total,
        "bottom_left": float(heat[h // 2:, : w // 2].sum()) / total,
        "bottom_right": float(heat[h // 2:, w // 2:].sum()) / total,
    }

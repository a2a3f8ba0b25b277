"""The ECHO model: a stock ``Qwen2_5_VLForConditionalGeneration`` driven with block masks and a KV cache.

No attention is re-implemented. Block diffusion needs three things around the stock model (method.md §2, §7):

* an explicit additive 4-D mask ``(B, 1, q, k)`` (block-causal over absolute positions, see :mod:`masks`);
* explicit M-RoPE position ids ``(3, B, q)`` (``get_rope_index`` for the prompt, text positions after it);
* control over what a forward leaves in the ``DynamicCache``: the official SDAR-style ``store_kv`` /
  ``store_kv_len`` become ``keep_kv`` here — the number of leading query positions whose keys/values stay in
  the cache (``None`` = all, ``0`` = read-only forward, ``b`` = the fused block cache). The stock cache always
  appends, so the rest is cropped off right after the forward.

:class:`EchoModel` maps tensors to logits and owns no loop; the samplers in :mod:`echo_model.sampling` do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

from .masks import to_attention_bias
from .processing import StudyPrompt
from .spec import EchoSpec, read_spec


def text_positions(first: int, count: int, delta: int, *, shift: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """M-RoPE ids of ``count`` text tokens at sequence indices ``first, first + 1, ...`` after a prompt.

    Qwen2.5-VL (``get_rope_index``) gives the text token at sequence index j the id ``j + delta`` on all three
    axes, where ``delta`` comes from the prompt's image grid (:meth:`EchoModel.rope_index`). ``shift`` is the
    left padding in front of the prompt (a left-padded batch row starts its prompt at index ``shift``).

    Returns:
        ``(3, count)`` long.
    """
    ids = torch.arange(first, first + count, device=device) - shift + delta  # (count,)
    return ids[None].expand(3, -1)  # (3, count)


def prompt_images(prompts: Sequence[StudyPrompt]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The batch's pixels and image grids, prompts with images in order (the language model reads the
    ``<|image_pad|>`` tokens of the batch in this order); ``(None, None)`` when no prompt has an image."""
    with_images = [p for p in prompts if p.pixel_values is not None]
    if not with_images:
        return None, None
    if len(with_images) == 1:  # no copy of one study's pixels (a megabyte or more, copied before every draft)
        return with_images[0].pixel_values, with_images[0].image_grid_thw
    return torch.cat([p.pixel_values for p in with_images]), torch.cat([p.image_grid_thw for p in with_images])


@dataclass
class PaddedBatch:
    """Right-padded sequences for one cache-free forward.

    Attributes:
        input_ids: ``(B, L)`` long, padding filled with the pad token.
        position_ids: ``(3, B, L)`` long M-RoPE ids (0 on padding).
        allow: ``(B, L, L)`` bool attention (row attends to column); padding rows see only themselves, so no
            real row sees padding and no row is fully masked.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    allow: torch.Tensor

    def to(self, device: torch.device | str) -> PaddedBatch:
        return PaddedBatch(self.input_ids.to(device), self.position_ids.to(device), self.allow.to(device))


def pad_sequences(ids: Sequence[torch.Tensor], positions: Sequence[torch.Tensor], allow: Sequence[torch.Tensor], *,
                  pad_id: int) -> PaddedBatch:
    """Right-pad per-sample ``ids (n,)``, ``positions (3, n)`` and ``allow (n, n)`` into a :class:`PaddedBatch`."""
    if not ids or not len(ids) == len(positions) == len(allow):
        raise ValueError(f"need as many ids, positions and masks (at least one), got {len(ids)}, {len(positions)}, "
                         f"{len(allow)}")
    B, L = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)  # (B, L)
    position_ids = torch.zeros(3, B, L, dtype=torch.long)  # (3, B, L)
    mask = torch.eye(L, dtype=torch.bool).repeat(B, 1, 1)  # (B, L, L) padding rows see themselves
    for i, (x, p, a) in enumerate(zip(ids, positions, allow)):
        n = len(x)
        input_ids[i, :n], position_ids[:, i, :n], mask[i, :n, :n] = x, p, a
    return PaddedBatch(input_ids, position_ids, mask)


class EchoModel:
    """A Qwen2.5-VL model plus its :class:`EchoSpec`."""

    def __init__(self, model: Qwen2_5_VLForConditionalGeneration, spec: EchoSpec | None = None):
        self.model = model
        self.spec = spec if spec is not None else read_spec(model.config)
        linear_patch_embedding(model)
        self.dtype_override: torch.dtype | None = None  # set when ``model`` is a wrapper (DDP) without .dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        # The first parameter, not ``model.dtype``: the latter walks every parameter on each call.
        return self.dtype_override or next(self.model.parameters()).dtype

    @property
    def block_length(self) -> int:
        return self.spec.block_length

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    @torch.no_grad()
    def rope_index(self, prompt: StudyPrompt, image_token_id: int) -> tuple[torch.Tensor, int]:
        """M-RoPE ids of one prompt and the delta that continues them for generated text.

        Returns:
            ``positions`` ``(3, P)`` long and ``delta`` such that the text token at sequence index j >= P has
            position ``j + delta`` on all three axes (Qwen2.5-VL ``get_rope_index``).
        """
        ids = prompt.input_ids[None].to(self.device)  # (1, P)
        mm_types = (ids == image_token_id).int()  # (1, P)
        grid = prompt.image_grid_thw.to(self.device) if prompt.image_grid_thw is not None else None
        positions, deltas = self.model.model.get_rope_index(ids, mm_types, image_grid_thw=grid)  # (3,1,P), (1,1)
        return positions[:, 0], int(deltas.reshape(-1)[0])

    def sequence_positions(self, prompt: StudyPrompt, image_token_id: int, length: int) -> torch.Tensor:
        """M-RoPE ids ``(3, length)`` (on the CPU) of ``prompt`` followed by ``length - P`` text tokens."""
        rope, delta = self.rope_index(prompt, image_token_id)  # (3, P), int
        P = prompt.length
        return torch.cat([rope.cpu(), text_positions(P, length - P, delta)], dim=1)  # (3, length)

    def forward_padded(self, batch: PaddedBatch, *, pixel_values: torch.Tensor | None = None,
                       image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """The cache-free forward over a right-padded batch (training, reference scoring); the tensors must be on
        the model's device already (:meth:`PaddedBatch.to`).

        Returns:
            logits ``(B, L, V)``.
        """
        bias = to_attention_bias(batch.allow, self.dtype)  # (B, 1, L, L)
        return self.forward(batch.input_ids, position_ids=batch.position_ids, attention_bias=bias, cache=None,
                            pixel_values=pixel_values, image_grid_thw=image_grid_thw)

    def image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """The merged image embeddings the language model reads, images concatenated in order.

        Args:
            pixel_values: ``(N_patches, C*T*14*14)`` as the processor makes them.
            image_grid_thw: ``(n_images, 3)``.
        Returns:
            ``(N_merged, D_text)``: one row per ``<|image_pad|>`` token, each image's rows in row-major order of
            its merged (2x2) grid (the vision tower undoes its window permutation before returning).
        """
        out = self.model.model.get_image_features(pixel_values.to(self.dtype), image_grid_thw)
        return torch.cat(out.pooler_output)  # (N_merged, D)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        cache: DynamicCache | None,
        keep_kv: int | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        logits_at: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One forward over query tokens, reading (and optionally extending) the cache.

        Args:
            input_ids: ``(B, q)``.
            position_ids: ``(3, B, q)`` M-RoPE ids.
            attention_bias: ``(B, 1, q, cache_len + q)`` additive mask.
            cache: the KV cache, or None for a cache-free forward over a whole sequence.
            keep_kv: how many leading query positions keep their keys/values in the cache (None = all).
            image_features: ``(N_merged, D)`` precomputed :meth:`image_features` for the batch's image tokens
                (instead of ``pixel_values``; lets attribution methods reach the vision tower's activations).
            logits_at: ``(n,)`` query columns whose logits are needed, or an int n >= 1 for the last n columns
                (None = all); saves the ``(B, q, V)`` projection when only a few positions are read (a
                prefill whose logits nobody reads, the new block of a fused forward).
        Returns:
            logits ``(B, q, V)``, or ``(B, n, V)`` with ``logits_at``.
        """
        return self._run(input_ids, position_ids=position_ids, attention_bias=attention_bias, cache=cache,
                         keep_kv=keep_kv, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                         image_features=image_features, logits_at=logits_at).logits

    def forward_with_attentions(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        image_features: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """A cache-free forward that also returns every language-model layer's attention probabilities.

        Runs the text attention in its eager form for this call only (SDPA and flash kernels return no
        weights); the numbers are the same softmax the SDPA kernel computes.

        Returns:
            logits ``(B, q, V)`` and one ``(B, heads, q, q)`` tensor per layer.
        """
        with _eager_text_attention(self.model.config):
            out = self._run(input_ids, position_ids=position_ids, attention_bias=attention_bias, cache=None,
                            keep_kv=None, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                            image_features=image_features, logits_at=None, output_attentions=True)
        if not out.attentions or any(a is None for a in out.attentions):
            raise RuntimeError("the language model returned no attention weights")
        return out.logits, tuple(out.attentions)

    def _run(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor, attention_bias: torch.Tensor,
             cache: DynamicCache | None, keep_kv: int | None, pixel_values: torch.Tensor | None,
             image_grid_thw: torch.Tensor | None, image_features: torch.Tensor | None,
             logits_at: torch.Tensor | int | None, output_attentions: bool = False):
        q = input_ids.shape[1]
        if keep_kv is not None and not 0 <= keep_kv <= q:
            raise ValueError(f"keep_kv must be in [0, {q}], got {keep_kv}")
        if isinstance(logits_at, int) and not 1 <= logits_at <= q:  # transformers reads 0 as "all"
            raise ValueError(f"logits_at must be in [1, {q}] query columns, got {logits_at}")
        if image_features is not None and pixel_values is not None:
            raise ValueError("give pixel_values or image_features, not both")
        extra: dict = {}
        if image_features is not None:
            extra["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=(image_features,))}
        if logits_at is not None:
            extra["logits_to_keep"] = logits_at
        if output_attentions:
            extra["output_attentions"] = True
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_bias,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            **extra,
        )
        if cache is not None and keep_kv is not None and keep_kv < q:
            cache.crop(-(q - keep_kv))
        return out  # .logits (B, q, V)

    __call__ = forward


class LinearPatchEmbed(Qwen2_5_VisionPatchEmbed):
    """The stock patch embedding computed as the matrix product it is.

    Its ``Conv3d`` has kernel = stride = one patch, so each output is the patch's flattened pixels times the
    flattened kernel: the same weights (the ``state_dict`` is unchanged) and the same numbers up to float
    rounding (~1e-6), in one GEMM instead of oneDNN's 3-D convolution, which on a CPU takes 3-4x as long
    (2.6 vs 0.7 ms for the 256 patches of a 224x224 view at the embedded size).
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight  # (D, C, T, P, P)
        flat = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)  # (N, C*T*P*P)
        return torch.nn.functional.linear(flat, weight.reshape(weight.shape[0], -1))  # (N, D)


def linear_patch_embedding(model: torch.nn.Module) -> None:
    """Switch every stock vision patch embedding inside ``model`` to :class:`LinearPatchEmbed` (in place)."""
    for module in model.modules():
        if type(module) is Qwen2_5_VisionPatchEmbed and module.proj.bias is None:
            module.__class__ = LinearPatchEmbed


@contextlib.contextmanager
def _eager_text_attention(config: Qwen2_5_VLConfig) -> Iterator[None]:
    """Switch the language model's attention to the eager kernel (which returns its weights) for a block."""
    text = config.text_config
    previous = text._attn_implementation
    text._attn_implementation = "eager"
    try:
        yield
    finally:
        text._attn_implementation = previous


@dataclass(frozen=True)
class TinyModelSize:
    """Dimensions of a Qwen2.5-VL built from scratch: small for CPU (tests, embedded checkpoints), or any size
    (``scripts/gpu_scale_bench.py`` writes out Qwen2.5-VL-7B's).

    ``text_layers x text_hidden`` and ``vision_depth x vision_hidden``; a 224x224 image gives 8x8 = 64 merged
    image tokens (14-px patches, 2x2 merge). ``mrope_section`` None splits the head's rotary frequencies over
    (t, h, w) like Qwen2.5-VL's [16, 24, 24] of 64; ``vision_fullatt_blocks`` None = the last vision block;
    ``rms_norm_eps`` / ``vision_tokens_per_second`` None = transformers' defaults.
    """

    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 704
    vision_hidden: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 256
    max_positions: int = 4096
    rope_theta: float = 10000.0
    mrope_section: tuple[int, int, int] | None = None
    rms_norm_eps: float | None = None
    tie_word_embeddings: bool = True
    vision_window: int = 112
    vision_fullatt_blocks: tuple[int, ...] | None = None
    vision_tokens_per_second: int | None = None


def tiny_config(vocab_size: int, *, token_ids: dict[str, int], size: TinyModelSize = TinyModelSize()) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of the given size whose special ids match ``token_ids``.

    ``token_ids`` maps ``image``, ``video``, ``vision_start``, ``vision_end``, ``eos``, ``pad`` to ids.
    """
    head_dim = size.text_hidden // size.text_heads
    if size.mrope_section is not None:
        mrope = list(size.mrope_section)
    else:
        if head_dim % 8:
            raise ValueError(f"text head dim {head_dim} must be a multiple of 8 for M-RoPE sections")
        half = head_dim // 2  # rotary frequencies split over (t, h, w) like Qwen2.5-VL's [16, 24, 24] of 64
        t_sec = half // 4
        mrope = [t_sec, (half - t_sec) // 2, half - t_sec - (half - t_sec) // 2]
    optional_text = {} if size.rms_norm_eps is None else {"rms_norm_eps": size.rms_norm_eps}
    optional_vision = ({} if size.vision_tokens_per_second is None
                       else {"tokens_per_second": size.vision_tokens_per_second})
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=size.text_hidden,
            intermediate_size=size.text_intermediate,
            num_hidden_layers=size.text_layers,
            num_attention_heads=size.text_heads,
            num_key_value_heads=size.text_kv_heads,
            max_position_embeddings=size.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": size.rope_theta, "mrope_section": mrope},
            eos_token_id=token_ids["eos"],
            pad_token_id=token_ids["pad"],
            bos_token_id=None,
            **optional_text,
        ),
        vision_config=dict(
            depth=size.vision_depth,
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_intermediate,
            num_heads=size.vision_heads,
            out_hidden_size=size.text_hidden,
            fullatt_block_indexes=(list(size.vision_fullatt_blocks) if size.vision_fullatt_blocks is not None
                                   else [size.vision_depth - 1]),
            window_size=size.vision_window,
            **optional_vision,
        ),
        image_token_id=token_ids["image"],
        video_token_id=token_ids["video"],
        vision_start_token_id=token_ids["vision_start"],
        vision_end_token_id=token_ids["vision_end"],
        tie_word_embeddings=size.tie_word_embeddings,
    )

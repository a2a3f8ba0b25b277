"""Study -> model inputs (prompt ids, pixels, image grid) and generated ids -> text.

Mirrors what ``Qwen2_5_VLProcessor`` does (chat template, one ``<|image_pad|>`` per merged 2x2 patch) with
the PIL-backed ``Qwen2VLImageProcessorPil``, so it needs no torchvision and works the same for the embedded
tokenizer and the real Qwen2.5 one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2VLImageProcessorPil

from .spec import EchoSpec
from .tokenization import IMAGE_PAD, resolve_mask_token_id


@dataclass
class StudyPrompt:
    """One study, encoded.

    Attributes:
        input_ids: ``(P,)`` long, the chat-formatted prompt ending with the assistant header.
        pixel_values: ``(N_patches, C*T*14*14)`` float, or None for a text-only study.
        image_grid_thw: ``(n_images, 3)`` long (t, h, w in 14-px patches), or None.
    """

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


class EchoProcessor:
    """Tokenizer + image processor + the checkpoint's :class:`EchoSpec`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: Qwen2VLImageProcessorPil, spec: EchoSpec):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.spec = spec
        self.mask_token_id = resolve_mask_token_id(tokenizer, spec.mask_token_id)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_PAD))
        self.merge_size = int(getattr(image_processor, "merge_size", 2))

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(cls, path: str | Path, spec: EchoSpec) -> "EchoProcessor":
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path))
        return cls(tokenizer, image_processor, spec)

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))

    # ------------------------------------------------------------------ encoding
    def messages(self, n_images: int, *, indication: str | None = None, lang: str = "en") -> list[dict[str, Any]]:
        content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": self.spec.instruction(lang, indication)})
        return [{"role": "user", "content": content}]

    def prompt_text(self, n_images: int, *, indication: str | None = None, lang: str = "en") -> str:
        """The chat-formatted prompt with one ``<|image_pad|>`` per image (before expansion)."""
        return self.tokenizer.apply_chat_template(
            self.messages(n_images, indication=indication, lang=lang), tokenize=False, add_generation_prompt=True
        )

    def encode(self, images: list[Image.Image] | None = None, *, indication: str | None = None, lang: str = "en") -> StudyPrompt:
        """Encode one study: its views (0 or more images), an optional indication, the report language."""
        images = list(images or [])
        text = self.prompt_text(len(images), indication=indication, lang=lang)
        pixel_values = grid = None
        if images:
            rgb = [im.convert("RGB") for im in images]
            out = self.image_processor(images=rgb, return_tensors="pt")
            pixel_values, grid = out["pixel_values"], out["image_grid_thw"]  # (N, D), (n, 3)
            parts = text.split(IMAGE_PAD)
            if len(parts) != len(images) + 1:
                raise ValueError(f"prompt has {len(parts) - 1} image slots for {len(images)} images")
            counts = (grid.prod(-1) // self.merge_size**2).tolist()  # merged tokens per image
            text = parts[0] + "".join(IMAGE_PAD * n + p for n, p in zip(counts, parts[1:]))
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]  # (P,)
        return StudyPrompt(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid)

    # ------------------------------------------------------------------ decoding
    def decode(self, token_ids: list[int]) -> str:
        """Generated ids -> report text: cut at the first ``<eos>``, drop special tokens, tidy spaces."""
        if self.eos_token_id in token_ids:
            token_ids = token_ids[: token_ids.index(self.eos_token_id)]
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return " ".join(text.split())

"""A checkpoint = weights + tokenizer + image processor + :class:`EchoSpec`, in one folder.

The folder is a plain transformers folder (``config.json`` of ``Qwen2_5_VLForConditionalGeneration``,
``model.safetensors``, tokenizer files, ``preprocessor_config.json``), loadable with stock classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from .modeling import EchoModel, TinyModelSize, tiny_config
from .processing import EchoProcessor
from .spec import EchoSpec, read_spec, write_spec
from .tokenization import IMAGE_PAD, IM_END, PAD_TOKEN, VIDEO_PAD, VISION_END, VISION_START, resolve_mask_token_id


@dataclass
class EchoCheckpoint:
    """A loaded checkpoint: the model and what turns studies into its inputs."""

    model: EchoModel
    processor: EchoProcessor
    source: str = ""

    @property
    def spec(self) -> EchoSpec:
        return self.model.spec

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_spec(self.model.model.config, self.model.spec)
        self.model.model.save_pretrained(str(path))
        self.processor.save_pretrained(path)


def build_tiny_checkpoint(
    tokenizer: PreTrainedTokenizerBase,
    spec: EchoSpec,
    *,
    size: TinyModelSize = TinyModelSize(),
    seed: int = 0,
    image_size: int = 224,
    vocab_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> EchoCheckpoint:
    """A randomly initialised Qwen2.5-VL of ``size`` around ``tokenizer`` (seeded), fp32 on CPU by default.

    ``image_size`` sets the image processor's pixel budget to about ``image_size**2`` so a radiograph becomes
    roughly ``(image_size / 28)**2`` image tokens. ``vocab_size`` (None = the tokenizer's) may be larger than
    the tokenizer, as in the official checkpoints. ``device`` / ``dtype``: the weights are created there, in
    that dtype (no fp32 copy first; ``meta`` allocates nothing).
    """
    ids = {
        "image": tokenizer.convert_tokens_to_ids(IMAGE_PAD),
        "video": tokenizer.convert_tokens_to_ids(VIDEO_PAD),
        "vision_start": tokenizer.convert_tokens_to_ids(VISION_START),
        "vision_end": tokenizer.convert_tokens_to_ids(VISION_END),
        "eos": tokenizer.convert_tokens_to_ids(IM_END),
        "pad": tokenizer.convert_tokens_to_ids(PAD_TOKEN),
    }
    spec = spec.replace(
        mask_token_id=resolve_mask_token_id(tokenizer, spec.mask_token_id),
        max_pixels=image_size * image_size,
        min_pixels=min(spec.min_pixels, (image_size // 2) ** 2),
    )
    vocab = len(tokenizer) if vocab_size is None else vocab_size
    if vocab < len(tokenizer):
        raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    config = tiny_config(vocab, token_ids=ids, size=size)
    write_spec(config, spec)
    torch.manual_seed(seed)
    with torch.device(device):
        model = (Qwen2_5_VLForConditionalGeneration(config) if dtype is None
                 else Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)).eval()
    image_processor = Qwen2VLImageProcessorPil(max_pixels=spec.max_pixels, min_pixels=spec.min_pixels)
    return EchoCheckpoint(EchoModel(model, spec), EchoProcessor(tokenizer, image_processor, spec), source="tiny")


def load_local_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> EchoCheckpoint:
    """Load a checkpoint folder saved by :meth:`EchoCheckpoint.save_pretrained` (or an official one)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder: no config.json")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path), dtype=dtype).to(device).eval()
    spec = read_spec(model.config)
    processor = EchoProcessor.from_pretrained(path, spec)
    spec = spec.replace(mask_token_id=processor.mask_token_id)
    return EchoCheckpoint(EchoModel(model, spec), EchoProcessor(processor.tokenizer, processor.image_processor, spec), source=str(path))

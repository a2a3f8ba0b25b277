"""Study records -> encoded training items (prompt ids, pixels, M-RoPE ids, response ids).

Encoding happens once, before training, so that image preprocessing and tokenisation are not repeated every
epoch. The response is the record's report in the model's format, ``Findings: ... Impression: ...``, followed
by ``<eos>``; for the diffusion stages it is padded with more ``<eos>`` up to the end of its block, so the model
learns to fill the rest of the block that holds ``<eos>`` with ``<eos>`` (what the sampler's stop rule reads).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from echo_model.data.records import StudyRecord
from echo_model.modeling import EchoModel, text_positions
from echo_model.processing import EchoProcessor, StudyPrompt

log = logging.getLogger(__name__)


@dataclass
class TrainItem:
    """One encoded study.

    Attributes:
        prompt: the encoded prompt (ids, pixels, grid).
        positions: ``(3, P + R)`` M-RoPE ids of prompt + response.
        response: ``(R,)`` response ids ending with ``<eos>`` (block-padded with ``<eos>`` for diffusion).
        record_id: the study id (for logs and de-duplication).
    """

    prompt: StudyPrompt
    positions: torch.Tensor
    response: torch.Tensor
    record_id: str

    @property
    def sequence(self) -> torch.Tensor:
        return torch.cat([self.prompt.input_ids, self.response])  # (P + R,)


def load_record_images(record: StudyRecord, base: Path | None) -> list:
    """The record's views as grey PIL images (via the project's image loader)."""
    from echo_model.imaging import load_image

    images = []
    for ref in record.images:
        path = Path(ref.path)
        if not path.is_absolute() and base is not None:
            path = base / path
        images.append(load_image(path).image)
    return images


def encode_items(
    records: Sequence[StudyRecord],
    model: EchoModel,
    processor: EchoProcessor,
    *,
    block_pad: bool,
    max_response_tokens: int = 256,
    image_base: Path | None = None,
    use_images: bool = True,
    augment: Callable[..., Image.Image] | None = None,
) -> list[TrainItem]:
    """Encode records; responses longer than ``max_response_tokens`` are cut (and logged).

    ``augment(image, key=i)`` (e.g. :class:`echo_model.augment.Augmenter`): a record that occurs again in
    ``records`` (``image_repeats`` > 1) has its images augmented on every occurrence after the first, each
    with its own key, so the repeats are the ways the same radiograph could look at other sites. The augmenter
    keeps the image size, so positions and grids match the original.
    """
    b = model.block_length
    eos = processor.eos_token_id
    items: list[TrainItem] = []
    cut, seen, augmented = 0, set(), 0
    for index, rec in enumerate(tqdm(records, desc="encoding studies", leave=False)):
        images = load_record_images(rec, image_base) if use_images and rec.images else []
        if images and augment is not None and rec.id in seen:
            images = [augment(im, key=index * 16 + j) for j, im in enumerate(images)]
            augmented += 1
        seen.add(rec.id)
        prompt = processor.encode(images, indication=rec.indication, lang=rec.language)
        ids = processor.tokenizer(rec.report, add_special_tokens=False)["input_ids"]
        if len(ids) > max_response_tokens - 1:
            ids, cut = ids[: max_response_tokens - 1], cut + 1
        ids.append(eos)
        if block_pad:
            ids += [eos] * ((-(prompt.length + len(ids))) % b)
        response = torch.tensor(ids, dtype=torch.long)
        rope, delta = model.rope_index(prompt, processor.image_token_id)  # (3, P), int
        positions = torch.cat([rope.cpu(), text_positions(prompt.length, len(ids), delta)], 1)  # (3, P+R)
        items.append(TrainItem(prompt=prompt, positions=positions, response=response, record_id=rec.id))
    if cut:
        log.info("cut %d of %d responses to %d tokens", cut, len(records), max_response_tokens)
    if augmented:
        log.info("augmented the images of %d repeated studies", augmented)
    return items

"""A small byte-level BPE tokenizer for the embedded checkpoints.

The real ECHO checkpoints use the Qwen2.5 tokenizer (152k tokens) with an added ``<|MASK|>``. A model of a
few million parameters cannot afford that embedding table, so the embedded family uses a byte-level BPE
trained on report text, wrapped as a ``PreTrainedTokenizerFast`` that carries the same special tokens and a
Qwen2.5-VL-style chat template. Code that builds prompts only ever goes through ``apply_chat_template`` and
the special-token *names*, so it works unchanged with the real tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .spec import MASK_TOKEN

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of turn == end of report (<eos>) in Qwen2.5 chat models
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, MASK_TOKEN,
)

# Qwen2.5-VL's template, without the default system turn (the embedded models never saw one).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_report_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer.

    Special tokens get the lowest ids, in the order of :data:`SPECIAL_TOKENS`; ``eos`` is ``<|im_end|>``
    (what Qwen2.5 chat models emit at the end of an answer) and ``pad`` is ``<|endoftext|>``.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256} (bytes + specials), got {vocab_size}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return wrap_tokenizer(core)


def wrap_tokenizer(core: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer`` that already holds :data:`SPECIAL_TOKENS` for transformers."""
    missing = [t for t in SPECIAL_TOKENS if core.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer lacks the special tokens {missing}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )
    tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (IM_END, PAD_TOKEN, MASK_TOKEN)]})
    return tok


def resolve_mask_token_id(tokenizer: PreTrainedTokenizerFast, config_value: int | None = None) -> int:
    """The mask id, resolved as the official code does: config, then ``tokenizer.mask_token_id``, then the
    ``<|MASK|>`` token itself."""
    if config_value is not None:
        return int(config_value)
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    tid = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"cannot resolve the mask token: no config.mask_token_id, no tokenizer.mask_token_id, no {MASK_TOKEN!r}")
    return int(tid)

"""The ECHO settings a checkpoint carries in its ``config.json``.

The official checkpoints are stock Qwen2.5-VL configs plus a ``mask_token_id``; ECHO also needs the block
length b, the prompt template and the image pixel budget (method.md §2). We keep all of them in one typed
dataclass, :class:`EchoSpec`, serialised under ``config.echo`` so that ``save_pretrained`` /
``from_pretrained`` of the stock class round-trip it without custom modelling code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

CONFIG_KEY = "echo"
MASK_TOKEN = "<|MASK|>"
Role = Literal["ar", "teacher", "student"]
ROLES: tuple[str, ...] = ("ar", "teacher", "student")
ReportStyle = Literal["raw", "normalized"]
REPORT_STYLES: tuple[str, ...] = ("raw", "normalized")

# The official prompts (inference/generate_echo.py, method.md §2).
OFFICIAL_INSTRUCTIONS: dict[str, str] = {
    "en": "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}.",
    "zh": "这是一组胸部X光图像，请生成一份医学报告，包括所见和结论。以以下格式返回报告：所见：{} 结论：{}。",
}
# How an optional clinical indication is put in front of the instruction.
INDICATION_FORMATS: dict[str, str] = {
    "en": "Indication: {indication}\n",
    "zh": "临床指征：{indication}\n",
}


@dataclass(frozen=True)
class EchoSpec:
    """Block-diffusion settings of one checkpoint.

    Attributes:
        block_length: b, tokens per block (4 or 8 in the paper).
        role: which training stage produced the weights: ``ar`` (Stage I), ``teacher`` (Stage II, RAD,
            "ECHO-Base") or ``student`` (Stage III, DCD, one step per block).
        mask_token_id: id of ``<|MASK|>``; ``None`` means "resolve from the tokenizer".
        languages: report languages the checkpoint was trained for.
        instructions: language -> instruction text of the user turn.
        indication_formats: language -> prefix put before the instruction when an indication is given;
            must contain ``{indication}``.
        max_pixels / min_pixels: image pixel budget given to the Qwen2.5-VL image processor.
        revision: free-form version string of the weights (shown in the app and in exports).
        report_style: ``normalized`` when the model was trained on normalized reports (method.md §3.5: every
            anatomical region stated, in a fixed order, then the Impression; the official checkpoints), else
            ``raw``. The report check then also asks every region for a statement.
    """

    block_length: int = 8
    role: Role = "student"
    mask_token_id: int | None = None
    languages: tuple[str, ...] = ("en",)
    instructions: dict[str, str] = field(default_factory=lambda: dict(OFFICIAL_INSTRUCTIONS))
    indication_formats: dict[str, str] = field(default_factory=lambda: dict(INDICATION_FORMATS))
    max_pixels: int = 1500 * 1500
    min_pixels: int = 256 * 28 * 28
    revision: str = "unversioned"
    report_style: ReportStyle = "raw"

    def __post_init__(self) -> None:
        if not isinstance(self.block_length, int) or self.block_length < 1:
            raise ValueError(f"block_length must be a positive int, got {self.block_length!r}")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not self.languages:
            raise ValueError("languages must name at least one language, got an empty list")
        for lang in self.languages:
            if lang not in self.instructions:
                raise ValueError(f"language {lang!r} has no instruction; known: {sorted(self.instructions)}")
            fmt = self.indication_formats.get(lang, "")
            if "{indication}" not in fmt:
                raise ValueError(f"indication format for {lang!r} must contain '{{indication}}', got {fmt!r}")
        if self.report_style not in REPORT_STYLES:
            raise ValueError(f"report_style must be one of {REPORT_STYLES}, got {self.report_style!r}")
        if self.min_pixels <= 0 or self.max_pixels < self.min_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        object.__setattr__(self, "languages", tuple(self.languages))

    def instruction(self, lang: str, indication: str | None = None) -> str:
        """The user-turn text for ``lang``, with the indication slot filled when one is given."""
        if lang not in self.languages:
            raise ValueError(f"language {lang!r} is not supported by this checkpoint; supported: {self.languages}")
        text = self.instructions[lang]
        if indication is not None and indication.strip():
            text = self.indication_formats[lang].format(indication=" ".join(indication.split())) + text
        return text

    def replace(self, **changes: Any) -> "EchoSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["languages"] = list(self.languages)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EchoSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ECHO config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


def read_spec(config: Any) -> EchoSpec:
    """Read the spec from a (Qwen2.5-VL) config.

    A config saved by this project carries ``config.echo``. An official ECHO checkpoint carries only
    ``mask_token_id`` (and sometimes ``block_length``/``block_size``); for those the defaults of the released
    inference code are used (b = 8, student, EN + ZH prompts, normalized reports).
    """
    data = getattr(config, CONFIG_KEY, None)
    if isinstance(data, dict):
        return EchoSpec.from_dict(data)
    block = getattr(config, "block_length", None) or getattr(config, "block_size", None) or 8
    return EchoSpec(
        block_length=int(block),
        role="student",
        mask_token_id=getattr(config, "mask_token_id", None),
        languages=("en", "zh"),
        report_style="normalized",
    )


def write_spec(config: Any, spec: EchoSpec) -> None:
    """Store ``spec`` on ``config`` (and ``mask_token_id`` at top level, where the official code looks)."""
    setattr(config, CONFIG_KEY, spec.to_dict())
    if spec.mask_token_id is not None:
        config.mask_token_id = spec.mask_token_id

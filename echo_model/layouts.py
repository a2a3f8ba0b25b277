"""Training layouts of block diffusion: which tokens a training sequence holds and who may attend to whom.

Two layouts (method.md §3.2-3.3):

* ``rad`` — Response-Asymmetric Diffusion (ECHO Stage II): ``[context | x_t (noisy response) | x_0 (clean
  response)]``. Only the response (plus the prompt's last partial block, the "tail", which the first
  generated block shares at inference) is duplicated, so a sequence costs P + 2R tokens instead of 2(P + R).
* ``full`` — SDAR / BD3-LM vectorised training: ``[x_t (noisy prompt+response) | x_0 (clean)]``, the whole
  sequence duplicated; kept for comparison.

Blocks are aligned on absolute positions of the original sequence (block of position j = j // b), exactly as
the inference mask (``echo_model.masks``). With ``blk`` the block of a token's original position:

=========  =======================================================================================
query in   may attend key k iff
=========  =======================================================================================
context    k in context and blk(k) <= blk(q)                      (block-causal, = the prefill)
x_t        k in context, or (k in x_t and blk(k) == blk(q)), or (k in x_0 and blk(k) < blk(q))
x_0        k in context, or (k in x_0 and blk(k) <= blk(q))
=========  =======================================================================================

In ``full`` there is no context segment; x_t and x_0 cover the whole sequence with the same rules (M_BD,
M_OBC, M_BC of BD3-LM). Both copies share position ids, so a noisy block sees exactly what the sampler's
block sees at inference: the context's and previous clean blocks' keys plus its own partially masked block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONTEXT, NOISY, CLEAN = 0, 1, 2
LAYOUTS = ("rad", "full")


@dataclass(frozen=True)
class Layout:
    """Positions of one training sequence.

    Attributes:
        source: ``(L,)`` index into the original ``prompt + response`` sequence of every position.
        segment: ``(L,)`` CONTEXT / NOISY / CLEAN.
        allow: ``(L, L)`` bool attention mask (True = may attend).
        prompt_length: P; response positions have ``source >= P``.
    """

    source: torch.Tensor
    segment: torch.Tensor
    allow: torch.Tensor
    prompt_length: int

    @property
    def length(self) -> int:
        return int(self.source.shape[0])

    def noisy_response(self) -> torch.Tensor:
        """``(L,)`` bool: the noisy copies of response tokens (where the diffusion loss is taken)."""
        return (self.segment == NOISY) & (self.source >= self.prompt_length)


def attention_rules(segment: torch.Tensor, blk: torch.Tensor) -> torch.Tensor:
    """The table in the module docstring, vectorised. ``(L,)`` segments and blocks -> ``(L, L)`` bool."""
    sq, sk = segment[:, None], segment[None, :]  # (L, 1), (1, L)
    bq, bk = blk[:, None], blk[None, :]
    ctx_q = (sq == CONTEXT) & (sk == CONTEXT) & (bk <= bq)
    noisy_q = (sq == NOISY) & ((sk == CONTEXT) | ((sk == NOISY) & (bk == bq)) | ((sk == CLEAN) & (bk < bq)))
    clean_q = (sq == CLEAN) & ((sk == CONTEXT) | ((sk == CLEAN) & (bk <= bq)))
    return ctx_q | noisy_q | clean_q  # (L, L)


def build_layout(prompt_length: int, response_length: int, block_length: int, kind: str = "rad") -> Layout:
    """Layout of one sample with a prompt of P and a response of R tokens."""
    P, R, b = prompt_length, response_length, block_length
    if P < 1 or R < 1 or b < 1:
        raise ValueError(f"need prompt_length, response_length, block_length >= 1, got {P}, {R}, {b}")
    if kind == "rad":
        s = (P // b) * b  # first block that holds response tokens
        dup = torch.arange(s, P + R)  # (D,) prompt tail + response
        source = torch.cat([torch.arange(s), dup, dup])  # (s + 2D,)
        segment = torch.cat([torch.full((s,), CONTEXT), torch.full((len(dup),), NOISY), torch.full((len(dup),), CLEAN)])
    elif kind == "full":
        whole = torch.arange(P + R)
        source = torch.cat([whole, whole])  # (2(P+R),)
        segment = torch.cat([torch.full((P + R,), NOISY), torch.full((P + R,), CLEAN)])
    else:
        raise ValueError(f"unknown layout {kind!r}; available: {list(LAYOUTS)}")
    allow = attention_rules(segment, torch.div(source, b, rounding_mode="floor"))
    return Layout(source=source, segment=segment, allow=allow, prompt_length=P)


def assemble(layout: Layout, clean: torch.Tensor, noisy: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and M-RoPE ids of the training sequence.

    Args:
        clean: ``(P+R,)`` the original prompt + response.
        noisy: ``(P+R,)`` the same with some response tokens replaced by the mask id.
        positions: ``(3, P+R)`` M-RoPE ids of the original sequence.
    Returns:
        ``(L,)`` ids (noisy copy where segment is NOISY) and ``(3, L)`` position ids.
    """
    ids = torch.where(layout.segment == NOISY, noisy[layout.source], clean[layout.source])  # (L,)
    return ids, positions[:, layout.source]  # (L,), (3, L)

"""Attention over packed prefix trees that computes only what a token may see.

A packed row (packed_logprobs.py) holds blocks of tokens: a prompt, then its responses, then the
next prompt... A query sees its own block causally and, for a response, its prompt's block in
full. A dense [row x row] mask would express that too, but the attention kernels compute every
masked-out pair before discarding it: for a prompt of 175 tokens and five responses of 375, the
dense mask costs 5-6x the attention FLOPs that are needed (bench_scoring.py's count). So each
block is one scaled_dot_product_attention call over [its context; itself], lower-right causal: no
pad, and no pair outside a block's own context, is computed (only the upper triangle of a
response's own keys, which its mask discards).

It plugs into transformers through its attention interface (the library's documented extension
point: `AttentionInterface.register`, then `set_attn_implementation`); the blocks travel as a
keyword argument of the forward pass, which transformers hands to the attention function of
every layer. `use_tree_attention` switches a model to it for the duration of a `with` block and
back, so the same loaded model still generates with its usual attention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "cream_tree_sdpa"
# What a layer may ask of its attention that this function does not do: refuse, never ignore.
UNSUPPORTED_KWARGS = ("softcap", "s_aux", "position_bias")


@dataclass(frozen=True)
class Block:
    """Queries [start, stop) of row `row` attend to keys [context_start, context_stop) (their
    prompt, all of it) and causally to their own keys [start, stop). `mask` is the boolean
    [queries, context + queries] mask of a block with a context (None without one)."""

    row: int
    start: int
    stop: int
    context_start: int = 0
    context_stop: int = 0
    mask: torch.Tensor | None = None


def block_mask(context: int, length: int, device=None) -> torch.Tensor:
    """Lower-right causal: query t sees the whole context and its own keys up to t."""
    return torch.ones(length, context + length, dtype=torch.bool, device=device).tril(context)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[batch, kv_heads, len, dim] -> [batch, kv_heads * n_rep, len, dim] (grouped queries)."""
    if n_rep == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, n, d).reshape(b, h * n_rep, n, d)


def tree_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask, dropout: float = 0.0, scaling: float | None = None,
                           tree_blocks: Sequence[Block] | None = None, **kwargs):
    """transformers' attention-function signature: query [batch, heads, len, dim], key and value
    [batch, kv_heads, len, dim]; returns ([batch, len, heads, dim], None). Positions of a row not
    covered by a block (padding) come out as zeros."""
    if tree_blocks is None:
        raise ValueError(f"the {NAME} attention needs the tree_blocks of the packed rows")
    window = kwargs.get("sliding_window")
    if window is not None and any(b.context_stop - b.context_start + b.stop - b.start > window
                                  for b in tree_blocks):
        raise ValueError(f"the {NAME} attention has no sliding window, and a sequence is longer "
                         f"than this model's ({window} tokens): score it with the padded path")
    for name in UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(f"the {NAME} attention cannot apply {name}: score this model with "
                             "the padded path")
    n_rep = query.shape[1] // key.shape[1]
    batch, _, width, _ = query.shape
    dropout = dropout if module.training else 0.0
    pieces: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    filled = [0] * batch
    for blk in sorted(tree_blocks, key=lambda b: (b.row, b.start)):
        if blk.start != filled[blk.row]:
            raise ValueError(f"tree blocks of row {blk.row} leave a gap at {filled[blk.row]}")
        r = blk.row
        q = query[r:r + 1, :, blk.start:blk.stop]
        k = key[r:r + 1, :, blk.start:blk.stop]
        v = value[r:r + 1, :, blk.start:blk.stop]
        if blk.context_stop > blk.context_start:
            k = torch.cat([key[r:r + 1, :, blk.context_start:blk.context_stop], k], dim=2)
            v = torch.cat([value[r:r + 1, :, blk.context_start:blk.context_stop], v], dim=2)
            out = F.scaled_dot_product_attention(q, _repeat_kv(k, n_rep), _repeat_kv(v, n_rep),
                                                 attn_mask=blk.mask, dropout_p=dropout,
                                                 scale=scaling)
        else:
            out = F.scaled_dot_product_attention(q, _repeat_kv(k, n_rep), _repeat_kv(v, n_rep),
                                                 is_causal=True, dropout_p=dropout, scale=scaling)
        pieces[r].append(out[0].transpose(0, 1))  # [len, heads, dim]
        filled[r] = blk.stop
    rows = []
    for r in range(batch):
        if filled[r] < width:
            pieces[r].append(query.new_zeros(width - filled[r], query.shape[1], value.shape[-1]))
        rows.append(torch.cat(pieces[r]))
    return torch.stack(rows), None


def register() -> None:
    """Make NAME known to transformers (idempotent)."""
    from transformers import AttentionInterface  # noqa: PLC0415

    AttentionInterface.register(NAME, tree_attention_forward)


def supports_tree_attention(model) -> bool:
    """Whether the model takes its attention function from transformers' interface (the
    modern decoders do; a model with its own attention code cannot be switched)."""
    return bool(getattr(model, "_can_set_attn_implementation", lambda: False)())


@contextmanager
def use_tree_attention(model) -> Iterator[None]:
    """`model` (a transformers model) attends with tree_attention_forward inside the block."""
    register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)

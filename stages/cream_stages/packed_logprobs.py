"""s_M without waste: each prompt computed once with its responses on top, no padding, and the
log-softmax taken in chunks.

Why it exists: score runs N responses per prompt (N = 5 by default) under two or three models,
and logprobs.py's padded path (kept as the reference) computes each prompt N times, pads every
sequence of a batch to the longest, and materialises float32 logits over the whole vocabulary at
every position, prompt positions included. Here:

- **Prefix sharing (layout "tree").** Every response of a prompt starts with the prompt's exact
  token ids (tokenization.encode_pair tokenises the prompt segment on its own), so a packed row
  holds [prompt, response_1, ..., response_N]: the prompt causal on itself, each response
  attending to the prompt and causally to itself only (tree_attention.py), its position ids
  continuing from the prompt's end. The logits at each response token are exactly those of the
  prompt + response sequence, and the prompt is computed once instead of N times.
- **Packing.** Trees (or single sequences: layout "packed") are packed best-fit-decreasing into
  one row of at most `row_tokens` tokens per forward pass: no pad token is ever computed, and
  the matrix products see one long [tokens x hidden] operand.
- **Chunked log-softmax.** The body of the model runs once per row; the head (lm_head) runs only
  at the positions that predict a target token, `logits_bytes` of float32 logits at a time, so
  the [tokens x vocab] logits never exist at once. A request of any size completes in bounded
  memory: `row_tokens` bounds the activations, `logits_bytes` the logits.
- **Exactness.** Per-token log-probs are float32, as in the padded path, and each sequence's sum
  is accumulated in float64 (float32 cannot hold the sum of a long response to 1e-4 nats).

Chosen against two alternatives that bench/bench_scoring.py also runs (the run recorded in
bench/RESULTS.md measured padded, packed and tree only; what follows is from the FLOP counts):
a dense tree-shaped [row x row] mask through the model's own sdpa attention (exact, but the
kernels compute every masked-out pair: at five responses the attention costs several times what
is needed), and a prompt's KV cache expanded to its N responses
(pads the responses to the longest of them, which with responses of 50-700 tokens costs about
what the prompt recomputation saved).

What it needs from the model: transformers' attention interface (tree_attention.py) and logits
that are get_output_embeddings() of the base model's last hidden state (no soft-capping or
scaling); `supports_packing` checks both, the latter on a few tokens. A model that fails it is
scored by the padded path.
"""

from __future__ import annotations

import bisect
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .tokenization import Encoded
from .tree_attention import Block, block_mask, supports_tree_attention, use_tree_attention

log = logging.getLogger(__name__)

LAYOUTS = ("tree", "packed")
# float32 logits computed at once (256 MiB: 1,365 positions of a 49k vocabulary, 512 of 128k).
DEFAULT_LOGITS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Tree:
    """A shared prefix and the sequences (indices into the encodings) that continue it."""

    prefix_len: int
    members: tuple[int, ...]


@dataclass(frozen=True)
class PackedRow:
    """One forward pass: the packed tokens, their attention blocks, and the scored tokens (the
    hidden state at column `col` predicts token `token`, a target of encoding `seq`)."""

    input_ids: torch.Tensor  # [1, width]
    position_ids: torch.Tensor  # [1, width]
    blocks: tuple[Block, ...]
    col: torch.Tensor  # [targets]
    token: torch.Tensor
    seq: torch.Tensor


def shared_prefix_len(enc: Encoded) -> int:
    """The prompt part of a sequence: everything before its first target token."""
    return enc.target_mask.index(1) if 1 in enc.target_mask else len(enc.input_ids)


def has_scored_token(enc: Encoded) -> bool:
    """Position 0 is never scored (nothing predicts it): s_M is 0 without a later target."""
    return any(enc.target_mask[1:])


def plan_trees(encodings: Sequence[Encoded], layout: str, row_tokens: int) -> list[Tree]:
    """The trees to compute: sequences grouped by identical prompt ("tree") or one per sequence
    ("packed"), split so that no tree outgrows a row (a sequence longer than a row gets a tree,
    and a row, of its own). Sequences without a scored token are left out."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown packing layout {layout!r} (known: {', '.join(LAYOUTS)})")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, enc in enumerate(encodings):
        if not has_scored_token(enc):
            continue
        key = tuple(enc.input_ids[:shared_prefix_len(enc)]) if layout == "tree" else (i,)
        groups.setdefault(key, []).append(i)
    trees = []
    for members in groups.values():
        prefix = shared_prefix_len(encodings[members[0]])
        current: list[int] = []
        size = prefix
        for i in members:
            branch = len(encodings[i].input_ids) - prefix
            if current and size + branch > row_tokens:
                trees.append(Tree(prefix, tuple(current)))
                current, size = [], prefix
            current.append(i)
            size += branch
        trees.append(Tree(prefix, tuple(current)))
    return trees


def tree_tokens(tree: Tree, encodings: Sequence[Encoded]) -> int:
    return tree.prefix_len + sum(len(encodings[i].input_ids) - tree.prefix_len
                                 for i in tree.members)


def pack_rows(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: item indices per row, each row's sizes summing to at most
    `capacity` (an item larger than that gets a row of its own)."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    remaining = [sizes[i] for i in order]  # ascending, aligned with `order`
    rows: list[list[int]] = []
    while order:
        row = [order.pop()]
        free = capacity - remaining.pop()
        while order:
            k = bisect.bisect_right(remaining, free) - 1  # the largest item that still fits
            if k < 0:
                break
            row.append(order.pop(k))
            free -= remaining.pop(k)
        rows.append(row)
    return rows


def build_row(trees: Sequence[Tree], encodings: Sequence[Encoded], device=None) -> PackedRow:
    """The tensors of one forward pass over `trees`, packed one after another."""
    ids: list[int] = []
    pos: list[int] = []
    blocks: list[Block] = []
    col, tok, seq = [], [], []
    for tree in trees:
        p = tree.prefix_len
        start = len(ids)
        ids.extend(encodings[tree.members[0]].input_ids[:p])
        pos.extend(range(p))
        if p:
            blocks.append(Block(0, start, start + p))
        for i in tree.members:
            enc = encodings[i]
            n = len(enc.input_ids) - p
            b0 = len(ids)
            ids.extend(enc.input_ids[p:])
            pos.extend(range(p, p + n))
            blocks.append(Block(0, b0, b0 + n, start, start + p,
                                block_mask(p, n, device) if p else None))
            for k in range(max(p, 1), p + n):  # index in the sequence; 0 has no predictor
                if enc.target_mask[k]:
                    col.append(start + p - 1 if k == p else b0 + k - p - 1)
                    tok.append(enc.input_ids[k])
                    seq.append(i)

    def tensor(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    return PackedRow(tensor([ids]), tensor([pos]), tuple(blocks), tensor(col), tensor(tok),
                     tensor(seq))


def plan_rows(encodings: Sequence[Encoded], layout: str, row_tokens: int) -> list[list[Tree]]:
    """The forward passes, each a row of trees of at most row_tokens tokens."""
    trees = plan_trees(encodings, layout, row_tokens)
    sizes = [tree_tokens(t, encodings) for t in trees]
    return [[trees[i] for i in row] for row in pack_rows(sizes, row_tokens)]


def logits_chunk_rows(vocab: int, logits_bytes: int) -> int:
    return max(1, logits_bytes // (4 * vocab))


def _chunk_logps(head, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()  # as the padded path: the head in the model's dtype
    return logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1)


def target_logps(head, states: torch.Tensor, tokens: torch.Tensor, vocab: int,
                 logits_bytes: int = DEFAULT_LOGITS_BYTES) -> torch.Tensor:
    """float32 log p of each token from the hidden state that predicts it ([targets, d]), the
    head applied `logits_bytes` of float32 logits at a time."""
    step = logits_chunk_rows(vocab, logits_bytes)
    pieces = [_chunk_logps(head, states[i:i + step], tokens[i:i + step])
              for i in range(0, len(states), step)]
    return torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)


def sum_by_sequence(logps: torch.Tensor, seq: torch.Tensor, n: int) -> torch.Tensor:
    """Per-sequence sums of token log-probs, accumulated in float64 ([n])."""
    out = torch.zeros(n, dtype=torch.float64, device=logps.device)
    return out.index_add(0, seq, logps.double())


@torch.no_grad()
def score_packed(model, encodings: Sequence[Encoded], *, layout: str = "tree", row_tokens: int,
                 logits_bytes: int = DEFAULT_LOGITS_BYTES, device=None,
                 desc: str = "score") -> list[float]:
    """s_M of each encoding, in input order (as logprobs.score_encodings, without its waste).

    Memory per forward pass: a row of row_tokens tokens (a longer sequence gets a row of its
    own) plus logits_bytes of logits.
    """
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    out = torch.zeros(len(encodings), dtype=torch.float64)
    with use_tree_attention(model):
        for trees in tqdm(plan_rows(encodings, layout, row_tokens), desc=desc, unit="row"):
            row = build_row(trees, encodings, device)
            hidden = model.base_model(input_ids=row.input_ids, position_ids=row.position_ids,
                                      tree_blocks=row.blocks, use_cache=False).last_hidden_state
            logps = target_logps(head, hidden[0, row.col], row.token, vocab, logits_bytes)
            out += sum_by_sequence(logps, row.seq, len(encodings)).cpu()
    return out.tolist()


def sequence_logps_packed(model, encodings: Sequence[Encoded],
                          layout: str = "tree") -> torch.Tensor:
    """Differentiable s_M of each encoding ([n], float64 sums): one forward pass of `model` itself
    over all of them in one row (a wrapper such as a DeepSpeed engine runs its own forward), the
    logits kept only where a target is predicted. The training counterpart of score_packed."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the transformers model
    device = next(inner.parameters()).device
    total = sum(len(e.input_ids) for e in encodings)
    row = build_row(plan_trees(encodings, layout, row_tokens=total), encodings, device)
    kwargs = {}
    keep, where = row.col, torch.arange(len(row.col), device=device)
    if "logits_to_keep" in inspect.signature(inner.forward).parameters:
        keep, where = torch.unique(row.col, return_inverse=True)
        kwargs["logits_to_keep"] = keep
    with use_tree_attention(inner):
        logits = model(input_ids=row.input_ids, position_ids=row.position_ids,
                       tree_blocks=row.blocks, use_cache=False, **kwargs).logits
    if "logits_to_keep" not in kwargs:
        logits = logits[:, keep]
    picked = logits[0, where].float()
    logps = picked.gather(-1, row.token[:, None]).squeeze(-1) - picked.logsumexp(-1)
    return sum_by_sequence(logps, row.seq, len(encodings))


def head_is_output_embeddings(model, probe: Sequence[int]) -> bool:
    """True when the model's logits are exactly get_output_embeddings() of the base model's last
    hidden state (not so under logit soft-capping or scaling), checked on `probe` tokens."""
    head = model.get_output_embeddings()
    if head is None or getattr(model, "base_model", model) is model:
        return False
    device = next(model.parameters()).device
    ids = torch.tensor([list(probe)], dtype=torch.long, device=device)
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        split = head(model.base_model(input_ids=ids, use_cache=False).last_hidden_state)
    return full.shape == split.shape and torch.equal(full, split)


def supports_packing(model, probe: Sequence[int]) -> tuple[bool, str]:
    """(whether score_packed computes this model's s_M, and if not why)."""
    if not supports_tree_attention(model):
        return False, "its attention is not pluggable (transformers' attention interface)"
    if not head_is_output_embeddings(model, probe):
        return False, "its logits are not the output embeddings of the last hidden state"
    return True, ""

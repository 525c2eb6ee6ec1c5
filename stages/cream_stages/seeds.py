"""Sampling seeds derived from names, not positions: what a prompt samples must not depend on how
requests are batched, in which order batches run, or which engine runs them (vLLM seeds each
prompt, the transformers backend each batch by its first prompt; engine_pool.py relies on both).
"""

from __future__ import annotations

import hashlib


def request_seed(seed: int, key: str) -> int:
    """A 31-bit seed from the run's seed and a prompt id (stable across processes and runs)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF

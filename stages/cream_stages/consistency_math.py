"""CREAM's consistency: rewards, per-prompt rank agreement, preference pairs and their weights.

Pure numpy + scipy, every value keyed by prompt id (never by position: the reference zipped
per-pair values against prompt keys after skipping prompts, which shifted them onto the wrong
prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

METHOD_FIELD = {"kendall": "tau", "spearman": "rho", "toporder": "top_order"}


def current_rewards(s_t, s_prev) -> np.ndarray:
    """r_t(y) = s_{M_t}(y) - s_{M_{t-1}}(y): the DPO implicit reward, reference = M_{t-1}."""
    return np.asarray(s_t, dtype=float) - np.asarray(s_prev, dtype=float)


def previous_rewards(s_prev, s_prev2=None, lengths=None) -> np.ndarray:
    """r_{t-1}(y) = s_{M_{t-1}}(y) - s_{M_{t-2}}(y) when M_{t-2} exists (t >= 2); at t = 1 there
    is no M_{-1}, so it is M0's length-normalised log-likelihood s_{M0}(y) / |y|."""
    s_prev = np.asarray(s_prev, dtype=float)
    if s_prev2 is not None:
        return s_prev - np.asarray(s_prev2, dtype=float)
    if lengths is None:
        raise ValueError("at t = 1 the lengths |y| are needed to normalise s_M0")
    return s_prev / np.asarray(lengths, dtype=float)


def ordinal_ranks(values) -> np.ndarray:
    """Ranks 1..n, ties broken by position (scipy's 'ordinal'), so tau is always defined."""
    return stats.rankdata(values, method="ordinal")


def agreement(r_t, r_prev, method: str) -> float:
    """The rank statistic of one prompt: Kendall's tau or Spearman's rho of the ordinal ranks, in
    [-1, 1]; for 'toporder', 1.0 when the best and the worst response agree, else 0.0."""
    r_t, r_prev = np.asarray(r_t, dtype=float), np.asarray(r_prev, dtype=float)
    if r_t.shape != r_prev.shape or r_t.size < 2:
        raise ValueError("need two reward vectors of the same length >= 2")
    if method == "kendall":
        return float(stats.kendalltau(ordinal_ranks(r_t), ordinal_ranks(r_prev)).statistic)
    if method == "spearman":
        return float(stats.spearmanr(ordinal_ranks(r_t), ordinal_ranks(r_prev)).statistic)
    if method == "toporder":
        # The reference compared only the first response's rank; best AND worst is the intent.
        same = np.argmax(r_t) == np.argmax(r_prev) and np.argmin(r_t) == np.argmin(r_prev)
        return 1.0 if same else 0.0
    raise ValueError(f"unknown method {method!r}")


def consistency_from_agreement(value: float, method: str) -> float:
    """C in [0, 1]: (tau + 1) / 2 for the correlations; the top-order flag is C itself."""
    return value if method == "toporder" else (value + 1.0) / 2.0


@dataclass(frozen=True)
class PromptResult:
    prompt_id: str
    kept: bool
    agreement: float | None  # tau, rho or the top-order flag; None when dropped
    c: float | None
    chosen_index: int | None
    rejected_index: int | None


def prompt_result(prompt_id: str, r_t, r_prev, method: str) -> PromptResult:
    """C and the pair of one prompt. chosen = argmax r_t, rejected = argmin r_t (first index on
    ties); a prompt whose r_t are all equal has no preference and is dropped."""
    r_t = np.asarray(r_t, dtype=float)
    if np.all(r_t == r_t[0]):
        return PromptResult(prompt_id, False, None, None, None, None)
    value = agreement(r_t, r_prev, method)
    return PromptResult(prompt_id, True, value, consistency_from_agreement(value, method),
                        int(np.argmax(r_t)), int(np.argmin(r_t)))


def consistency_rate(results: dict[str, PromptResult]) -> float:
    """The iteration's consistency rate: the mean C over the kept prompts (dropped prompts have no
    ranking to agree on, so they neither raise nor lower it)."""
    kept = [r.c for r in results.values() if r.kept]
    if not kept:
        raise ValueError("no prompt was kept")
    return float(np.mean(kept))


def pair_weights(results: dict[str, PromptResult], strategy: str) -> dict[str, float]:
    """The DPO weight C of each kept prompt's pair, by prompt id: `avg` gives every pair the
    consistency rate, `dynamic` its own C, `none` 1.0 (plain self-rewarding DPO)."""
    kept = {pid: r for pid, r in results.items() if r.kept}
    if strategy == "avg":
        rate = consistency_rate(results)
        return {pid: rate for pid in kept}
    if strategy == "dynamic":
        return {pid: float(r.c) for pid, r in kept.items()}
    if strategy == "none":
        return dict.fromkeys(kept, 1.0)
    raise ValueError(f"unknown strategy {strategy!r}")

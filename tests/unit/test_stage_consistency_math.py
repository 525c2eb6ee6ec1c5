"""CREAM's consistency math against scipy and the formulas of ARCHITECTURE.md."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cream_stages import consistency_math as cm

# r_t and r_{t-1} of three prompts with 5 responses each (tie in r_t of p2 at the max).
R_T = {
    "p1": [0.5, -1.0, 2.0, 0.1, -0.3],
    "p2": [1.0, 1.0, -2.0, 0.0, 0.5],
    "p3": [-0.2, 0.4, 0.3, -1.5, 0.9],
}
R_PREV = {
    "p1": [0.4, -0.9, 1.1, 0.2, -0.1],
    "p2": [-1.0, 2.0, 0.0, 0.3, 0.1],
    "p3": [0.9, -0.4, 0.3, 1.5, -0.9],
}


def _ordinal(x):
    return stats.rankdata(x, method="ordinal")


@pytest.mark.parametrize("pid", sorted(R_T))
def test_kendall_consistency_is_scipy_tau_of_ordinal_ranks(pid):
    expected_tau = stats.kendalltau(_ordinal(R_T[pid]), _ordinal(R_PREV[pid])).statistic
    res = cm.prompt_result(pid, R_T[pid], R_PREV[pid], "kendall")
    assert res.agreement == pytest.approx(expected_tau, abs=1e-12)
    assert res.c == pytest.approx((expected_tau + 1) / 2, abs=1e-12)


def test_fixture_values_by_hand():
    # p1: identical orderings -> tau 1, C 1; p3: exactly reversed -> tau -1, C 0.
    assert cm.prompt_result("p1", R_T["p1"], R_PREV["p1"], "kendall").c == pytest.approx(1.0)
    assert cm.prompt_result("p3", R_T["p3"], R_PREV["p3"], "kendall").c == pytest.approx(0.0)
    same = cm.prompt_result("x", [1, 2, 3], [10, 20, 30], "kendall")
    assert same.agreement == pytest.approx(1.0) and same.c == pytest.approx(1.0)


@pytest.mark.parametrize("pid", sorted(R_T))
def test_spearman_consistency_is_scipy_rho_of_ordinal_ranks(pid):
    rho = stats.spearmanr(_ordinal(R_T[pid]), _ordinal(R_PREV[pid])).statistic
    res = cm.prompt_result(pid, R_T[pid], R_PREV[pid], "spearman")
    assert res.agreement == pytest.approx(rho, abs=1e-12)
    assert res.c == pytest.approx((rho + 1) / 2, abs=1e-12)


def test_ties_are_broken_by_position_so_tau_is_defined():
    # With ordinal ranks a tie in r_t still yields a full ranking (positions break it).
    res = cm.prompt_result("p2", R_T["p2"], R_PREV["p2"], "kendall")
    assert np.isfinite(res.agreement)
    assert list(cm.ordinal_ranks([1.0, 1.0, -2.0])) == [2, 3, 1]


def test_toporder_needs_best_and_worst_to_agree():
    # Best (index 2) and worst (index 1) agree although the middle differs: C = 1.
    assert cm.prompt_result("a", [0, -5, 9, 1, 2], [3, -1, 7, 0, 0.5], "toporder").c == 1.0
    # Best agrees, worst does not: C = 0.
    assert cm.prompt_result("b", [0, -5, 9, 1, 2], [-3, -1, 7, 0, 0.5], "toporder").c == 0.0


def test_toporder_is_not_the_reference_first_response_check():
    # The first response has the same rank under both (rank 1 = worst)... but the best differs.
    r_t, r_prev = [-1.0, 0.0, 1.0, 0.5], [-1.0, 0.9, 0.2, 0.5]
    assert _ordinal(r_t)[0] == _ordinal(r_prev)[0]
    assert cm.prompt_result("p", r_t, r_prev, "toporder").c == 0.0


def test_pair_is_argmax_and_argmin_of_current_rewards():
    for pid, r_t in R_T.items():
        res = cm.prompt_result(pid, r_t, R_PREV[pid], "kendall")
        assert res.chosen_index == int(np.argmax(r_t))
        assert res.rejected_index == int(np.argmin(r_t))
        assert res.chosen_index != res.rejected_index


def test_all_tied_prompt_is_dropped():
    res = cm.prompt_result("tied", [0.25, 0.25, 0.25], [1.0, 2.0, 3.0], "kendall")
    assert not res.kept and res.c is None and res.chosen_index is None


def test_rewards_at_t1_use_length_normalised_m0_likelihood():
    s_m1, s_m0, lengths = [-10.0, -20.0, -6.0], [-12.0, -18.0, -9.0], [4, 10, 3]
    assert cm.current_rewards(s_m1, s_m0) == pytest.approx([2.0, -2.0, 3.0])
    assert cm.previous_rewards(s_m0, lengths=lengths) == pytest.approx([-3.0, -1.8, -3.0])


def test_rewards_at_t2_use_the_previous_pair_of_models():
    s_m2, s_m1, s_m0 = [-9.0, -4.0], [-10.0, -5.0], [-7.0, -8.0]
    assert cm.current_rewards(s_m2, s_m1) == pytest.approx([1.0, 1.0])
    assert cm.previous_rewards(s_m1, s_m0) == pytest.approx([-3.0, 3.0])


def _results(method="kendall", tied_pid=None):
    r_t = dict(R_T)
    if tied_pid:
        r_t[tied_pid] = [0.0] * 5
    return {pid: cm.prompt_result(pid, r_t[pid], R_PREV[pid], method) for pid in r_t}


def test_strategies_give_the_pairs_their_values():
    results = _results()
    own = {pid: r.c for pid, r in results.items()}
    rate = np.mean(list(own.values()))
    assert cm.consistency_rate(results) == pytest.approx(rate)
    assert cm.pair_weights(results, "avg") == pytest.approx(dict.fromkeys(own, rate))
    assert cm.pair_weights(results, "dynamic") == pytest.approx(own)
    assert cm.pair_weights(results, "none") == dict.fromkeys(own, 1.0)


def test_dropped_prompt_shifts_no_other_prompt_value():
    full = _results()
    dropped = _results(tied_pid="p2")
    weights = cm.pair_weights(dropped, "dynamic")
    assert set(weights) == {"p1", "p3"}
    assert weights["p1"] == full["p1"].c and weights["p3"] == full["p3"].c
    # The mean is over the kept prompts only.
    assert cm.consistency_rate(dropped) == pytest.approx((full["p1"].c + full["p3"].c) / 2)

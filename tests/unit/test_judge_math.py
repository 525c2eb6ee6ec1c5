"""Judge rewards: reading scores, averaging K judgements, the pair and C of a prompt, against
closed forms and scipy."""

from __future__ import annotations

import pytest
from scipy import stats

from cream_stages import judge_math as jm
from cream_stages import judge_prompt as jp

PATTERN = jp.DEFAULT_PATTERN


@pytest.mark.parametrize(("text", "expected"), [
    ("Good answer.\nScore: 4", 4.0),
    ("Score: 3.5 because ...", 3.5),
    ("Score:2\nScore: 5", 2.0),  # the first match counts
    ("I give it five points.", None),  # no match: unparseable, not 0
    ("Score: 7", None),  # outside [0, 5]
    ("Score: -1", None),  # the pattern does not take a sign: no match
    ("", None),
])
def test_parse_score(text, expected):
    assert jp.parse_score(text, PATTERN, 0, 5) == expected


def test_a_custom_pattern_reads_its_first_group():
    assert jp.parse_score("rating=[8/10]", r"rating=\[(\d+)/10\]", 1, 10) == 8.0
    assert jp.parse_score("x", r"(?:y)?(\d)?", 0, 9) is None  # the group did not take part


def test_mean_over_parseable_judgements_only():
    assert jp.mean_score([4.0, None, 2.0]) == 3.0
    assert jp.mean_score([None, None]) is None


def test_template_and_pattern_problems():
    assert jp.template_problem(jp.DEFAULT_TEMPLATE) is None
    assert "{response}" in jp.template_problem("Rate {prompt}")
    assert jp.pattern_problem(PATTERN) is None
    assert "group" in jp.pattern_problem(r"Score: \d")
    assert "not a regular expression" in jp.pattern_problem("Score: ([0-9]")
    filled = jp.judge_prompt("Q={prompt} A={response} {other}", "2+2?", "4")
    assert filled == "Q=2+2? A=4 {other}"


def test_pair_is_best_and_worst_scored_response_and_c_is_kendalls():
    scores = [3.0, None, 5.0, 1.0, 4.0]
    previous = [2.0, 4.0, 4.5, None, 1.0]
    r = jm.prompt_result("p", scores, previous, "kendall")
    assert r.kept and (r.chosen_index, r.rejected_index) == (2, 3)
    # Over the responses both judges scored: 0, 2, 4.
    tau = stats.kendalltau(stats.rankdata([3.0, 5.0, 4.0], method="ordinal"),
                           stats.rankdata([2.0, 4.5, 1.0], method="ordinal")).statistic
    assert r.agreement == pytest.approx(tau) and r.c == pytest.approx((tau + 1) / 2)


def test_ties_and_unscored_prompts_are_dropped():
    assert not jm.prompt_result("p", [3.0, 3.0, None], None, "kendall").kept
    assert not jm.prompt_result("p", [None, 2.0, None], None, "kendall").kept
    r = jm.prompt_result("p", [1.0, 2.0], [None, 3.0], "kendall")
    assert r.kept and r.c is None  # one response in common: no ranking to agree with


def test_weights_by_strategy():
    results = {"a": jm.JudgeResult("a", True, 0, 1, 1.0, 1.0),
               "b": jm.JudgeResult("b", True, 0, 1, 0.0, 0.5),
               "c": jm.JudgeResult("c", True, 0, 1, None, None),
               "d": jm.JudgeResult("d", False, None, None, None, None)}
    assert jm.pair_weights(results, "none") == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert jm.pair_weights(results, "dynamic") == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert jm.pair_weights(results, "avg") == {"a": 0.75, "b": 0.75, "c": 1.0}

"""The engine pool's pure parts: the batches it cuts and the order it hands them out in."""

from __future__ import annotations

from cream_stages.engine_pool import (
    batches,
    cpu_threads,
    even_chunks,
    longest_first,
    prompt_batches,
)


def test_batches_are_one_engines_batches():
    assert batches([5] * 7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches([1, 9, 4, 9], 2, order=[1, 3, 2, 0]) == [[1, 3], [2, 0]]
    assert batches([], 4) == []


def test_even_chunks_split_by_cost_not_count():
    chunks = even_chunks([10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2)
    assert chunks == [[0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    assert [i for c in even_chunks(list(range(1, 30)), 5) for i in c] == list(range(29))
    assert len(even_chunks([3] * 40, 4)) == 4
    assert even_chunks([7], 8) == [[0]]


def test_longest_batches_go_first_ties_in_order():
    work = [[0], [1, 2], [3]]
    costs = [5, 1, 4, 5]
    assert longest_first(work, costs) == [0, 1, 2]  # 5, 5, 5: input order
    assert longest_first(work, [5, 1, 4, 9]) == [2, 0, 1]
    assert longest_first([[0], [1]], [3, 3]) == [0, 1]


def test_cpu_threads_share_the_cores():
    assert cpu_threads(1) >= 1
    assert cpu_threads(1000) == 1


def test_prompt_batches_keep_a_prompts_responses_together():
    """For the tree scorer: a prompt's responses never split, costliest prompt first, batches
    filled with whole prompts up to batch_size sequences (a larger prompt alone)."""
    prompts = ["a", "b", "a", "c", "b", "a", "c", "d", "d", "d", "d", "d"]
    costs = [5, 9, 5, 1, 9, 5, 1, 2, 2, 2, 2, 2]
    got = prompt_batches(prompts, costs, batch_size=4)
    assert got == [[1, 4], [0, 2, 5], [7, 8, 9, 10, 11], [3, 6]]
    for batch in got:
        assert len({prompts[i] for i in batch}) == 1 or len(batch) <= 4
    assert sorted(i for b in got for i in b) == list(range(len(prompts)))

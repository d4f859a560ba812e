"""Speculative decoding's model-free parts: drafts from a sequence's own tokens, and a draft's length."""
from __future__ import annotations

import pytest

from service.engines.speculation import (
    ROW_COST_CPU,
    ROW_COST_GPU,
    PromptLookup,
    draft_length,
    expected_run,
)


def test_drafts_follow_the_latest_earlier_occurrence_of_the_longest_suffix():
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 2, 3, 4], n_vocab=100)
    assert lookup.draft(3) == [6, 7, 2]           # "2 3 4" last seen before the suffix: followed by 6 7 2
    lookup.extend([6])
    assert lookup.draft(2) == [7, 2]              # "3 4 6" → 7 2
    assert lookup.draft(0) == []


def test_no_match_no_draft_and_never_the_suffix_itself():
    assert PromptLookup([5, 6, 7, 8], n_vocab=100).draft(4) == []
    assert PromptLookup([1, 2, 3], n_vocab=100).draft(4) == []
    assert PromptLookup([7, 7, 7, 7], n_vocab=100).draft(4) == [7]     # "7 7 7" seen once before the suffix
    assert PromptLookup([1, 2, 9, 1, 2], n_vocab=100).draft(4) == []   # two tokens are not enough to go on


def test_a_draft_stops_at_an_image_placeholder():
    assert PromptLookup([1, 2, 3, 500, 500, 4, 1, 2, 3], n_vocab=100).draft(4) == []
    assert PromptLookup([1, 2, 3, 8, 500, 1, 2, 3], n_vocab=100).draft(4) == [8]


def test_the_index_grows_with_the_output():
    lookup = PromptLookup(list(range(10)), n_vocab=100)
    lookup.extend([0, 1])
    assert lookup.draft(3) == []                  # "9 0 1" never seen
    lookup.extend([2])
    assert lookup.draft(3) == [3, 4, 5]           # "0 1 2" was
    lookup.extend([3])
    assert lookup.draft(3) == [4, 5, 6]


def test_acceptance_follows_what_drafts_did_and_drifts_back_when_unused():
    lookup = PromptLookup([1], n_vocab=10)
    assert lookup.acceptance == 0.5
    for _ in range(30):
        lookup.verified(8, 8)
    assert lookup.acceptance > 0.9
    high = lookup.acceptance
    for _ in range(30):
        lookup.verified(2, 1)                     # the first token taken: how far the step verified is not counted
    assert lookup.acceptance > high
    for _ in range(30):
        lookup.verified(1, 0)
    assert lookup.acceptance < 0.35
    for _ in range(100):
        lookup.unused()
    assert lookup.acceptance == pytest.approx(0.5, abs=0.05)


def test_expected_run():
    assert expected_run(0.5, 3) == pytest.approx(0.875)
    assert expected_run(1.0, 4) == 4
    assert expected_run(0.0, 4) == 0


def test_draft_length_is_a_power_of_two_where_it_pays():
    assert draft_length(0.99, 16, ROW_COST_CPU) in (8, 16)
    assert draft_length(0.99, 5, ROW_COST_CPU) == 4
    assert draft_length(0.3, 16, ROW_COST_CPU) == 0           # on a CPU a row costs about as much as a step
    assert draft_length(0.3, 16, ROW_COST_GPU) == 2           # on a GPU rows are nearly free
    assert draft_length(0.9, 0, ROW_COST_GPU) == 0
    for a in (0.5, 0.7, 0.9, 0.97, 1.0):
        k = draft_length(a, 16, ROW_COST_CPU)
        assert k == 0 or k & (k - 1) == 0



def test_the_step_verifies_as_much_as_pays_for_everyone():
    from service.engines.speculation import step_length
    assert step_length([(0.99, 16)], 0, ROW_COST_CPU) >= 8           # alone, a good draft: long
    assert step_length([(0.99, 16)] * 8, 0, ROW_COST_CPU) <= 16
    assert step_length([(0.6, 16)] * 8, 0, ROW_COST_CPU) == 1        # eight mediocre drafts on a CPU: one token each
    assert step_length([(0.9, 16)] * 8, 0, ROW_COST_GPU) >= 4        # rows nearly free
    assert step_length([(0.9, 4)], 0, ROW_COST_CPU) in (1, 2, 4)
    assert step_length([(0.1, 0)], 3, ROW_COST_CPU) == 1             # at least one

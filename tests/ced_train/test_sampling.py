"""Which records share a batch (ced_train.sampling): length groups, the extraction plan, epoch order."""

import doctest

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import ced_train.sampling
from ced_train.sampling import ExtractionPlan, epoch_order, equal_length_batches, length_groups, prefetch


@given(st.lists(st.integers(1, 5), max_size=30), st.integers(1, 7))
def test_equal_length_batches_cover_every_position_once_with_one_length_each(lengths, batch_size):
    found = equal_length_batches(lengths, batch_size)
    assert sorted(np.concatenate(found).tolist() if found else []) == list(range(len(lengths)))
    for batch in found:
        assert 1 <= len(batch) <= batch_size and len({lengths[i] for i in batch}) == 1
    assert [len(set(np.asarray(lengths)[g].tolist())) for g in length_groups(lengths)] == \
        [1] * len(set(lengths))


def test_extraction_plan_covers_every_record_once_with_one_length_per_batch():
    lengths = np.array([5, 3, 5, 3, 5, 4])
    plan = ExtractionPlan(lengths, num_epochs=2, batch_size=4)
    seen = []
    for b in range(plan.num_batches):
        epoch_ids, sample_ids = plan.records(b)
        assert len(sample_ids) == plan.sizes[b] and len(set(lengths[sample_ids])) == 1
        seen += list(zip(epoch_ids.tolist(), sample_ids.tolist()))
    assert sorted(seen) == [(e, i) for e in range(2) for i in range(6)]
    assert plan.records(0)[1].tolist() == [1, 3, 1, 3]  # shortest first, epoch-major
    written = np.zeros((2, 6), dtype=bool)
    written[:, [1, 3]] = True  # the length-3 group's only batch
    assert plan.done(written).tolist() == [True] + [False] * (plan.num_batches - 1)
    equal = ExtractionPlan(np.full(5, 7), num_epochs=2, batch_size=4)
    assert [ids.tolist() for ids in equal.records(1)] == [[0, 1, 1, 1], [4, 0, 1, 2]]  # g = e·N + i


def test_epoch_order_is_seeded_and_ranks_are_disjoint():
    assert np.array_equal(epoch_order(10, 0, 3), epoch_order(10, 0, 3))
    assert not np.array_equal(epoch_order(10, 0, 3), epoch_order(10, 0, 4))
    ranks = [epoch_order(11, 0, 0, rank, 3) for rank in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]  # cut to a multiple of the world size
    assert len(set(np.concatenate(ranks).tolist())) == 9
    assert set(np.concatenate(ranks).tolist()) <= set(epoch_order(11, 0, 0).tolist())


def test_prefetch_keeps_the_order_and_runs_one_ahead():
    calls = []
    results = prefetch(lambda x: calls.append(x) or x * 10, [1, 2, 3])
    assert next(results) == 10 and calls[:1] == [1]
    assert list(results) == [20, 30] and calls == [1, 2, 3]
    assert list(prefetch(lambda x: x, [])) == []


def test_docstring_examples():
    assert doctest.testmod(ced_train.sampling).failed == 0

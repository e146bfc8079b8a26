"""Admission's cost model: batch time against batch size, so a burst is costed by the batches it forms."""

from __future__ import annotations

import pytest

from app.batch_cost import BatchCostModel


def search_bound(size: int) -> float:
    """Exact search over a large Flat index: one scan serves the whole batch."""
    return 0.5 + 0.002 * size


def encoder_bound(size: int) -> float:
    return 0.001 + 0.01 * size


def trained(cost, sizes) -> BatchCostModel:
    model = BatchCostModel()
    for size in sizes:
        model.observe(size, cost(size))
    return model


def test_nothing_observed_means_no_wait_estimate() -> None:
    assert BatchCostModel().estimated_wait_s(queued=100, incoming=10, max_batch=64) == 0.0


def test_the_line_is_recovered_from_mixed_batch_sizes() -> None:
    model = trained(search_bound, [1, 8, 64, 3, 128, 16] * 5)
    cost = model.cost()
    assert cost is not None and cost.slope_known
    assert cost.fixed_s == pytest.approx(0.5, rel=1e-6)
    assert cost.per_query_s == pytest.approx(0.002, rel=1e-6)


def test_a_burst_after_single_queries_is_costed_as_one_batch_on_a_search_bound_index() -> None:
    """The rule that rates got wrong: 128 one-query callers after a quiet phase fit in one batch."""
    model = trained(search_bound, [1] * 40)
    wait = model.estimated_wait_s(queued=127, incoming=1, max_batch=256)
    assert wait == pytest.approx(search_bound(1))  # one batch: the observed batch time
    # A rate of recent batches would have said 128 x 0.5 s = 64 s and refused most of the burst.
    assert wait < 10.0


def test_once_large_batches_ran_their_real_cost_is_used() -> None:
    model = trained(search_bound, [1] * 20 + [128, 64, 256, 200] * 3)
    assert model.estimated_wait_s(queued=511, incoming=1, max_batch=256) == pytest.approx(
        2 * search_bound(256), rel=1e-3
    )


def test_an_encoder_bound_lane_is_costed_per_query() -> None:
    model = trained(encoder_bound, [1, 4, 16, 64, 2, 32] * 5)
    assert model.estimated_wait_s(queued=999, incoming=1, max_batch=250) == pytest.approx(
        4 * encoder_bound(250), rel=1e-3
    )


def test_beyond_the_first_batch_an_unknown_slope_grows_with_the_queries() -> None:
    """Cautious until larger batches have been seen: only one batch is taken on trust."""
    model = trained(encoder_bound, [1] * 30)
    wait = model.estimated_wait_s(queued=1023, incoming=1, max_batch=256)
    assert wait == pytest.approx(encoder_bound(1) + 3 * 256 * encoder_bound(1), rel=1e-6)


def test_the_running_batch_counts_as_a_whole_batch() -> None:
    model = trained(search_bound, [1, 8, 64, 128] * 5)
    idle = model.estimated_wait_s(queued=0, incoming=1, max_batch=256)
    busy = model.estimated_wait_s(queued=0, incoming=1, max_batch=256, running=128)
    assert busy - idle == pytest.approx(search_bound(128), rel=1e-3)


def test_old_batches_fade_when_the_index_changes_speed() -> None:
    model = trained(search_bound, [1, 64, 128] * 30)
    for _ in range(200):
        for size in (1, 64, 128):
            model.observe(size, 2 * search_bound(size))
    assert model.batch_seconds(64) == pytest.approx(2 * search_bound(64), rel=0.05)


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), float("inf")])
def test_nonsense_timings_are_ignored(seconds: float) -> None:
    model = BatchCostModel()
    model.observe(8, seconds)
    assert model.cost() is None


def test_only_what_is_left_of_the_running_batch_counts() -> None:
    model = trained(search_bound, [1, 8, 64, 128] * 5)
    fresh = model.estimated_wait_s(queued=0, incoming=1, max_batch=256, running=128, running_for_s=0.0)
    halfway = model.estimated_wait_s(queued=0, incoming=1, max_batch=256, running=128, running_for_s=0.25)
    overdue = model.estimated_wait_s(queued=0, incoming=1, max_batch=256, running=128, running_for_s=60.0)
    assert fresh - halfway == pytest.approx(0.25, rel=1e-6)
    assert overdue == pytest.approx(model.estimated_wait_s(queued=0, incoming=1, max_batch=256))

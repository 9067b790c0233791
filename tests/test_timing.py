"""utils.timing.TimedIterator separates time waiting for data from the consumer's own work."""

import time

import pytest

from utils.timing import TimedIterator


def _slow_source(n: int, delay: float):
    for i in range(n):
        time.sleep(delay)
        yield i


@pytest.mark.parametrize("source_delay, work, expect_starved", [(0.03, 0.0, True), (0.0, 0.03, False)])
def test_wait_fraction(source_delay, work, expect_starved):
    timed = TimedIterator(_slow_source(5, source_delay))
    seen = []
    for item in timed:
        time.sleep(work)
        seen.append(item)
    assert seen == list(range(5)) and timed.items == 5
    assert timed.total_s >= 5 * 0.03 and 0 <= timed.wait_s <= timed.total_s
    if expect_starved:
        assert timed.wait_fraction > 0.8
    else:
        assert timed.wait_fraction < 0.2
    s = timed.summary()
    assert set(s) == {"data_wait_s", "wall_s", "data_wait_fraction"}


def test_len_and_empty():
    timed = TimedIterator([1, 2, 3])
    assert len(timed) == 3 and timed.total_s == 0.0 and timed.wait_fraction == 0.0
    empty = TimedIterator([])
    assert list(empty) == [] and empty.items == 0

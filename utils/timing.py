"""Where evaluation time goes: the share of wall time spent waiting for data."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class TimedIterator(Generic[T]):
    """Iterate over `iterable` and measure the wall time spent inside `next()` (waiting for data).

    After (or during) the loop: `wait_s` (seconds waiting, loader start-up included), `total_s` (seconds
    since iteration began), `items`, and `wait_fraction` = wait_s / total_s. The consumer's own work is
    the rest of `total_s`, so `wait_fraction` near 0 means the data never starved the model.
    """

    def __init__(self, iterable: Iterable[T]):
        self.iterable = iterable
        self.wait_s = 0.0
        self.items = 0
        self._start: float | None = None
        self._end: float | None = None

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[T]:
        self._start, self._end = time.perf_counter(), None
        it = iter(self.iterable)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.wait_s += time.perf_counter() - t
                break
            self.wait_s += time.perf_counter() - t
            self.items += 1
            yield item
        self._end = time.perf_counter()

    @property
    def total_s(self) -> float:
        if self._start is None:
            return 0.0
        return (self._end if self._end is not None else time.perf_counter()) - self._start

    @property
    def wait_fraction(self) -> float:
        total = self.total_s
        return self.wait_s / total if total > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """{"data_wait_s", "wall_s", "data_wait_fraction"} rounded for reports."""
        return {"data_wait_s": round(self.wait_s, 3), "wall_s": round(self.total_s, 3),
                "data_wait_fraction": round(self.wait_fraction, 4)}


__all__ = ["TimedIterator"]

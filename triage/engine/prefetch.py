"""Bounded, ordered prefetching: decode the next files while the model works.

Memory stays flat however large the input: at most ``ahead`` items are in
flight at any time.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int = 2, ahead: int = 64
) -> Iterator[tuple[T, R | BaseException]]:
    """Yield ``(item, fn(item))`` in input order, computing up to ``ahead`` items early.

    An exception raised by ``fn`` is yielded in place of its result, so one bad
    item never stops the stream.
    """
    pending: deque[tuple[T, Future[R]]] = deque()
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="triage-decode") as pool:
        try:
            for item in iterator:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= ahead:
                    yield _settle(*pending.popleft())
            while pending:
                yield _settle(*pending.popleft())
        finally:
            for _, future in pending:  # a consumer that stops early leaves no work running
                future.cancel()


def _settle(item: T, future: "Future[R]") -> tuple[T, R | BaseException]:
    try:
        return item, future.result()
    except Exception as exc:
        return item, exc


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

"""The iterators `iter(DataLoader)` returns: one that loads each batch when asked
(`SingleProcessIterator`), and one that loads the next batch on a background thread while the
caller uses the current one (`PrefetchIterator`).

Both take the indices from the sampler on the caller's thread (so a sampler drawing from the
global random state draws at a reproducible point); only `fetch` (reading the dataset and
collating) runs on the prefetch thread.  That thread starts with grad mode as the caller had it
when the iterator was made and with no active trace (see `neurenix.state`).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ...state import is_grad_enabled, set_grad_enabled

_OK, _ERROR, _END = "ok", "error", "end"
_PENDING = ("pending", None)


class SingleProcessIterator:
    """Each `next()` reads the next indices from the sampler and fetches their batch."""

    def __init__(self, indices: Iterator[Any], fetch: Callable[[Any], Any],
                 length: Callable[[], int]) -> None:
        self._indices = indices
        self._fetch = fetch
        self._length = length

    def __iter__(self) -> SingleProcessIterator:
        return self

    def __next__(self) -> Any:
        return self._fetch(next(self._indices))

    def __len__(self) -> int:
        return self._length()

    def close(self) -> None:
        """Nothing to release (for symmetry with `PrefetchIterator.close`)."""


def _serve(fetch: Callable[[Any], Any], requests: queue.SimpleQueue,
           results: queue.SimpleQueue, stop: object, grad_enabled: bool) -> None:
    """The prefetch thread: fetch each requested index until `stop`, posting every outcome
    (a batch, an exception, or the end of an iterable dataset).  It holds no reference to the
    iterator, so dropping the iterator is seen (its `__del__` posts `stop`)."""
    with set_grad_enabled(grad_enabled):
        while True:
            index = requests.get()
            if index is stop:
                return
            try:
                results.put((_OK, fetch(index)))
            except StopIteration:
                results.put((_END, None))
            except BaseException as error:  # noqa: BLE001  (handed to the consumer)
                results.put((_ERROR, error))


class PrefetchIterator:
    """Loads batch k + 1 on a background thread while the caller has batch k.

    An exception fetching a batch is raised by the `next()` that would have returned it (the
    iteration can go on after it, as without prefetching).  The thread ends when the batches
    run out, on `close()` (which waits for it), or when the iterator is dropped (as after a
    `break`): then it finishes the batch it is loading and exits.
    """

    def __init__(self, indices: Iterator[Any], fetch: Callable[[Any], Any],
                 length: Callable[[], int]) -> None:
        self._indices = indices
        self._length = length
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = object()
        self._ahead: tuple[str, Any] | None = None
        self._thread = threading.Thread(
            target=_serve, name="neurenix-dataloader-prefetch", daemon=True,
            args=(fetch, self._requests, self._results, self._stop, is_grad_enabled()))
        self._thread.start()
        self._request()

    def _request(self) -> None:
        """Send the sampler's next indices to the thread (or note the end, or its error)."""
        try:
            index = next(self._indices)
        except StopIteration:
            self._ahead = None
            return
        except Exception as error:  # noqa: BLE001  (raised by the next `next()`)
            self._ahead = (_ERROR, error)
            return
        self._requests.put(index)
        self._ahead = _PENDING

    def __iter__(self) -> PrefetchIterator:
        return self

    def __next__(self) -> Any:
        ahead = self._ahead
        if ahead is None:
            self.close()
            raise StopIteration
        kind, value = self._results.get() if ahead is _PENDING else ahead
        if kind == _END:
            self._ahead = None
            self.close()
            raise StopIteration
        self._request()
        if kind == _ERROR:
            raise value
        return value

    def __len__(self) -> int:
        return self._length()

    def close(self) -> None:
        """Stop the prefetch thread and wait for it (it first finishes a batch in flight)."""
        self._ahead = None
        if self._thread.is_alive():
            self._requests.put(self._stop)
            if threading.current_thread() is not self._thread:
                self._thread.join()

    def __del__(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive():
            self._requests.put(self._stop)

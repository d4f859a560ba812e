"""A least-recently-used cache bounded in bytes, not entries: for values built from what clients send
(grammars, parsed templates), where one entry can be large."""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    def __init__(self, max_bytes: int, size: Callable[[K, V], int]):
        self.max_bytes = max_bytes
        self._size = size
        self._items: collections.OrderedDict[K, tuple[V, int]] = collections.OrderedDict()
        self.bytes = 0
        self._lock = threading.Lock()          # templates are rendered in worker threads

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V) -> None:
        size = self._size(key, value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._items)

"""Weighted, resumable mixing of several example streams into batches.

Two modes:

* ``sample`` (default): every example picks its source with probability proportional to
  the source weights, so one batch mixes tasks (the model computes per-sample losses). A
  batch closes at ``batch_size`` examples, or -- with a token budget -- as soon as its
  padded size (examples x longest example) reaches ``tokens_per_batch``.
* ``batch``: the reference behaviour; each batch picks one source by weight and takes
  that source's own ``batch_size`` examples.

The mixer's whole state -- its random generator and every stream's position -- is a
small JSON-able dict, saved in each checkpoint so a resumed run draws exactly the batches
an uninterrupted one would have.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class ExampleStream(Protocol):
    """An endless iterator of examples that can report and restore its position."""

    def __iter__(self) -> Iterator[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class MixSource:
    name: str
    stream: ExampleStream
    weight: float
    batch_size: int  # used in "batch" mode


class Mixer:
    """Yields lists of examples (batches) drawn from weighted streams."""

    def __init__(
        self,
        sources: list[MixSource],
        seed: list[int] | int,
        mode: str = "sample",
        batch_size: int = 8,
        tokens_per_batch: int | None = None,
        length_of: Callable[[dict], int] = lambda example: len(example["input_ids"]),
    ):
        if not sources:
            raise ValueError("no data sources to mix")
        if mode not in ("sample", "batch"):
            raise ValueError(f"mixing mode must be 'sample' or 'batch', got {mode!r}")
        weights = np.asarray([s.weight for s in sources], dtype=np.float64)
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"mixing weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self.sources = sources
        self.probabilities = weights / weights.sum()
        self.mode = mode
        self.batch_size = batch_size
        self.tokens_per_batch = tokens_per_batch
        self.length_of = length_of
        self.rng = np.random.default_rng(seed)
        self._iterators: dict[str, Iterator[dict]] = {}
        self._exhausted: set[str] = set()

    # ---------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "streams": {s.name: s.stream.state_dict() for s in self.sources},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        for source in self.sources:
            source.stream.load_state_dict(state["streams"][source.name])
        self._iterators.clear()  # restart the iterators from the restored positions
        self._exhausted.clear()

    # ------------------------------------------------------------------- batching

    def _next_from(self, index: int) -> dict:
        source = self.sources[index]
        if source.name not in self._iterators:
            self._iterators[source.name] = iter(source.stream)
        return next(self._iterators[source.name])

    def _pick(self) -> int:
        live = self._live()
        p = np.where(live, self.probabilities, 0.0)
        return int(self.rng.choice(len(self.sources), p=p / p.sum()))

    def _live(self) -> np.ndarray:
        return np.asarray([s.name not in self._exhausted for s in self.sources])

    def _draw(self, index: int | None = None) -> dict | None:
        """The next example of ``index`` (or of a weighted pick); None when every stream
        has ended (finite, e.g. validation, streams only)."""
        while self._live().any():
            chosen = self._pick() if index is None else index
            try:
                return self._next_from(chosen)
            except StopIteration:
                self._exhausted.add(self.sources[chosen].name)
                if index is not None:
                    return None
        return None

    def __iter__(self) -> Iterator[list[dict]]:
        while True:
            batch = self.next_batch()
            if not batch:
                return
            yield batch

    def next_batch(self) -> list[dict]:
        """The next batch; empty once every (finite) stream has ended."""
        if self.mode == "batch":
            if not self._live().any():
                return []
            index = self._pick()
            batch = []
            for _ in range(self.sources[index].batch_size):
                example = self._draw(index)
                if example is None:
                    break
                batch.append(example)
            return batch if batch else self.next_batch()
        batch: list[dict] = []
        longest = 0
        while len(batch) < self.batch_size:
            example = self._draw()
            if example is None:
                break
            batch.append(example)
            longest = max(longest, self.length_of(example))
            if self.tokens_per_batch is not None and len(batch) * longest >= self.tokens_per_batch:
                break
        return batch

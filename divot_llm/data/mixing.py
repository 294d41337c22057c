"""Weighted, resumable mixing of several example streams into batches.

Two modes:

* ``sample`` (default): every example picks its source with probability proportional to
  the source weights, so one batch mixes tasks (the model computes per-sample losses). A
  batch closes at ``batch_size`` examples, or -- with a token budget -- as soon as its
  size in tokens (``tokens_of``: padded, examples x longest; real tokens when packing)
  reaches ``tokens_per_batch``.
* ``batch``: the reference behaviour; each batch takes one source, picked by weight, and
  up to that source's own ``batch_size`` examples (a token budget can close it earlier).
  The pick for the k-th batch of a rank comes from the shared seed and k alone (see
  ``BatchSchedule``), never from anything rank-specific: in a step every rank trains on
  the same source, so no rank's 20-clip comprehension batch holds up the others'
  generation batches.

The mixer's whole state -- its random generator, its batch count and every stream's
position -- is a small JSON-able dict, saved in each checkpoint so a resumed run draws
exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import copy
import functools
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
    batch_size: int  # the cap in "batch" mode


@dataclass(frozen=True)
class BatchSchedule:
    """Which batches of its rank's stream a reader produces, and the seed their sources
    come from ("batch" mode).

    A rank's dataloader hands out its workers' batches round-robin, so the reader in
    worker slot ``first`` of ``every`` workers makes the rank's batches ``first``,
    ``first + every``, ... The source of batch k is drawn from ``(seed, k)`` only: the
    same on every rank, whatever each rank's samples."""

    seed: list[int]  # the same on every rank
    first: int = 0
    every: int = 1


def padded_tokens(lengths: list[int]) -> int:
    """A batch's size in tokens once padded to its longest example."""
    return len(lengths) * max(lengths, default=0)


class Mixer:
    """Yields lists of examples (batches) drawn from weighted streams.

    Args:
        seed: the generator of "sample" mode's per-example picks (rank-specific: each
            reader mixes its own examples).
        schedule: where "batch" mode's per-batch picks come from (shared by the ranks;
            None: from ``seed``, for a mixer that is the only reader).
        tokens_of: a batch's size in tokens from its examples' lengths, for the budget.
    """

    def __init__(
        self,
        sources: list[MixSource],
        seed: list[int] | int,
        mode: str = "sample",
        batch_size: int = 8,
        tokens_per_batch: int | None = None,
        length_of: Callable[[dict], int] = lambda example: len(example["input_ids"]),
        schedule: BatchSchedule | None = None,
        tokens_of: Callable[[list[int]], int] = padded_tokens,
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
        self.length_of, self.tokens_of = length_of, tokens_of
        self.rng = np.random.default_rng(seed)
        self.schedule = schedule or BatchSchedule(seed=list(np.atleast_1d(seed).tolist()))
        self.batches = 0  # made so far: the next is the rank's batch first + every x batches
        self._iterators: dict[str, Iterator[dict]] = {}
        self._exhausted: set[str] = set()

    # ---------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "batches": self.batches,
            "streams": {s.name: s.stream.state_dict() for s in self.sources},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.batches = int(state["batches"])
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

    def _pick(self, rng: np.random.Generator) -> int:
        live = self._live()
        p = np.where(live, self.probabilities, 0.0)
        return int(rng.choice(len(self.sources), p=p / p.sum()))

    def _live(self) -> np.ndarray:
        return np.asarray([s.name not in self._exhausted for s in self.sources])

    def _draw(self, index: int | None = None) -> dict | None:
        """The next example of ``index`` (or of a weighted pick); None when every stream
        has ended (finite, e.g. validation, streams only)."""
        while self._live().any():
            chosen = self._pick(self.rng) if index is None else index
            try:
                return self._next_from(chosen)
            except StopIteration:
                self._exhausted.add(self.sources[chosen].name)
                if index is not None:
                    return None
        return None

    def _fill(self, cap: int, draw: Callable[[], dict | None]) -> list[dict]:
        """Up to ``cap`` examples from ``draw``, closed early once the token budget is
        reached (or the stream ends)."""
        batch: list[dict] = []
        lengths: list[int] = []
        while len(batch) < cap:
            example = draw()
            if example is None:
                break
            batch.append(example)
            lengths.append(self.length_of(example))
            if self.tokens_per_batch is not None and self.tokens_of(lengths) >= self.tokens_per_batch:
                break
        return batch

    def __iter__(self) -> Iterator[list[dict]]:
        while True:
            batch = self.next_batch()
            if not batch:
                return
            yield batch

    def next_batch(self) -> list[dict]:
        """The next batch; empty once every (finite) stream has ended."""
        if self.mode == "sample":
            return self._fill(self.batch_size, self._draw)
        step = self.schedule.first + self.schedule.every * self.batches
        rng = np.random.default_rng([*self.schedule.seed, step])  # the same on every rank
        while self._live().any():
            # A source that has ended on this reader (finite streams: validation) is
            # dropped and the pick redrawn among the rest, from the same generator.
            index = self._pick(rng)
            batch = self._fill(self.sources[index].batch_size, functools.partial(self._draw, index))
            if batch:
                self.batches += 1
                return batch
        return []

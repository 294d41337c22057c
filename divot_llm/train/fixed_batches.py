"""The loader interface (``__iter__``, ``state_dict``, ``load_state_dict``,
``skip_counts``) over a fixed list of batches: what ``Trainer(cfg, build_loader=...)``
takes to train on batches made or fetched beforehand (tests, ``tools/bench``, overfitting
one batch)."""

from __future__ import annotations

from collections.abc import Iterator


class FixedBatches:
    """``batches`` handed out in turn, cycled without end. The state is how many were
    handed out, so a resumed run continues with the next one; nothing is ever skipped."""

    def __init__(self, batches: list[dict]):
        self.batches, self.position = batches, 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]

    def skip_counts(self) -> dict[str, int]:
        return {}

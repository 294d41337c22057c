"""Weighted mixing: proportions, batch modes, one source per step on every rank, token
budget, exact resume, finite streams."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from divot_llm.data.mixing import BatchSchedule, Mixer, MixSource


class CountingStream:
    """An endless stream of examples with a resumable position (stands in for a data
    source in these tests of the mixer itself)."""

    def __init__(self, name: str, length: int, total: int | None = None):
        self.name, self.length, self.total, self.position = name, length, total, 0

    def __iter__(self):
        while self.total is None or self.position < self.total:  # total: a finite stream
            self.position += 1
            yield {"id": f"{self.name}{self.position - 1}", "input_ids": [0] * self.length}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def make_mixer(
    mode="sample", tokens_per_batch=None, seed=7, schedule=None, totals=(None, None, None), **kwargs
):
    sources = [
        MixSource("comp", CountingStream("c", 100, totals[0]), weight=1.3, batch_size=2),
        MixSource("gen", CountingStream("g", 10, totals[1]), weight=1.0, batch_size=8),
        MixSource("img", CountingStream("i", 20, totals[2]), weight=0.6, batch_size=4),
    ]
    return Mixer(
        sources,
        seed=seed,
        mode=mode,
        batch_size=4,
        tokens_per_batch=tokens_per_batch,
        schedule=schedule,
        **kwargs,
    )


def rank_sources(rank: int, num_workers: int, steps: int) -> list[str]:
    """The source of each of a rank's first ``steps`` batches: one mixer per worker slot,
    seeded per reader as the loader does (``rank`` changes its examples and its
    "sample"-mode generator), batches taken round-robin over the slots as torch's
    DataLoader hands them out."""
    slots = [
        make_mixer("batch", seed=[rank, slot], schedule=BatchSchedule([42], first=slot, every=num_workers))
        for slot in range(num_workers)
    ]
    return [slots[k % num_workers].next_batch()[0]["id"][0] for k in range(steps)]


def test_sample_mode_mixes_sources_in_proportion_to_weights():
    mixer = make_mixer()
    examples = [ex["id"][0] for _ in range(3000) for ex in mixer.next_batch()]
    counts = Counter(examples)
    total = sum(counts.values())
    for name, weight in [("c", 1.3), ("g", 1.0), ("i", 0.6)]:
        assert counts[name] / total == pytest.approx(weight / 2.9, abs=0.015)
    batches = [{ex["id"][0] for ex in make_mixer().next_batch()} for _ in range(50)]
    assert any(len(b) > 1 for b in batches)  # batches really mix tasks


def test_batch_mode_takes_one_source_with_its_batch_size():
    mixer = make_mixer(mode="batch")
    sizes = {"c": 2, "g": 8, "i": 4}
    for _ in range(30):
        batch = mixer.next_batch()
        names = {ex["id"][0] for ex in batch}
        assert len(names) == 1 and len(batch) == sizes[names.pop()]


def test_every_rank_and_worker_layout_draws_the_same_source_per_step():
    expected = rank_sources(rank=0, num_workers=1, steps=300)
    for rank, num_workers in [(1, 1), (3, 2), (5, 3)]:
        assert rank_sources(rank, num_workers, steps=300) == expected
    counts = Counter(expected)  # still weighted draws, not one fixed source
    for name, weight in [("c", 1.3), ("g", 1.0), ("i", 0.6)]:
        assert counts[name] / 300 == pytest.approx(weight / 2.9, abs=0.08)


def test_token_budget_closes_a_batch_once_padded_size_reaches_it():
    mixer = make_mixer(tokens_per_batch=150)
    for _ in range(50):
        batch = mixer.next_batch()
        lengths = [len(ex["input_ids"]) for ex in batch]
        assert len(batch) <= 4
        full = len(batch) * max(lengths) >= 150
        assert full or len(batch) == 4
        # closing one example earlier would have stayed under the budget
        assert len(batch) == 1 or (len(batch) - 1) * max(lengths[:-1]) < 150


def test_token_budget_closes_batch_mode_batches_below_the_source_batch_size():
    sizes = {"c": 1, "g": 6, "i": 3}  # 1 x 100, 6 x 10, 3 x 20 tokens reach 60
    mixer = make_mixer(mode="batch", tokens_per_batch=60)
    for _ in range(30):
        batch = mixer.next_batch()
        names = {ex["id"][0] for ex in batch}
        assert len(names) == 1 and len(batch) == sizes[names.pop()]
    # packed (padding-free), the loader's budget counts real tokens: the same sizes here,
    # where each source's examples have one length
    packed = make_mixer(mode="batch", tokens_per_batch=60, tokens_of=sum)
    for _ in range(30):
        batch = packed.next_batch()
        assert len(batch) == sizes[batch[0]["id"][0]] and sum(len(ex["input_ids"]) for ex in batch) >= 60


def test_a_finite_stream_ends_source_by_source_and_gives_every_example_once():
    mixer = make_mixer(mode="batch", totals=(3, 11, 5))
    batches = list(mixer)
    ids = [ex["id"] for batch in batches for ex in batch]
    assert len(ids) == len(set(ids)) == 3 + 11 + 5
    assert all(len({ex["id"][0] for ex in batch}) == 1 for batch in batches)  # one source each
    assert mixer.next_batch() == []


@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_resume_draws_exactly_the_batches_of_an_uninterrupted_run(mode):
    schedule = BatchSchedule([3], first=1, every=2)
    reference = make_mixer(mode, tokens_per_batch=120, schedule=schedule)
    expected = [[ex["id"] for ex in reference.next_batch()] for _ in range(20)]
    first = make_mixer(mode, tokens_per_batch=120, schedule=schedule)
    got = [[ex["id"] for ex in first.next_batch()] for _ in range(8)]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    # a fresh process; its own seed and batch count are overridden by the state
    second = make_mixer(mode, tokens_per_batch=120, seed=12345, schedule=schedule)
    second.load_state_dict(state)
    got += [[ex["id"] for ex in second.next_batch()] for _ in range(12)]
    assert got == expected


def test_bad_weights_and_modes_are_rejected():
    stream = CountingStream("x", 1)
    with pytest.raises(ValueError, match="weights"):
        Mixer([MixSource("x", stream, weight=0.0, batch_size=1)], seed=0)
    with pytest.raises(ValueError, match="mode"):
        Mixer([MixSource("x", stream, weight=1.0, batch_size=1)], seed=0, mode="round_robin")
    assert np.isclose(make_mixer().probabilities.sum(), 1.0)

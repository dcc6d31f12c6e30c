"""Batching: padding to the longest in the batch, and the seeded, length-grouped, resumable training order."""

from __future__ import annotations

import random

import torch

from lightbert.batching import LengthGroupedSampler, PaddingCollator


def test_batches_are_padded_to_the_longest_text_not_max_length():
    collate = PaddingCollator(pad_token_id=0)
    batch = collate(
        [
            {"input_ids": [2, 5, 3], "index": 0, "labels": torch.tensor(1)},
            {"input_ids": [2, 3], "index": 1, "labels": torch.tensor(0)},
        ]
    )
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["index"].tolist() == [0, 1] and batch["labels"].tolist() == [1, 0]


def test_sampler_visits_every_sample_once_per_epoch():
    sampler = LengthGroupedSampler(list(range(103)), batch_size=8, seed=0, group_size=4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sorted(sampler) == list(range(103))


def test_sampler_is_seeded_and_reshuffles_each_epoch():
    lengths = [i % 17 for i in range(200)]
    a, b = LengthGroupedSampler(lengths, 8, seed=3), LengthGroupedSampler(lengths, 8, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(LengthGroupedSampler(lengths, 8, seed=4)) != list(b)


def test_sampler_groups_similar_lengths_into_batches():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(800)]
    order = list(LengthGroupedSampler(lengths, batch_size=16, seed=0))
    spread = [
        max(lengths[i] for i in order[b : b + 16]) - min(lengths[i] for i in order[b : b + 16])
        for b in range(0, 800, 16)
    ]
    assert sum(spread) / len(spread) < 15  # a random order would spread ~90 tokens within a batch


def test_sampler_puts_the_longest_text_in_the_first_batch_of_every_epoch():
    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(803)]
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=0, group_size=5)
    for epoch in range(4):  # a batch too big for memory fails at the first step, not later
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert max(lengths[i] for i in order[:16]) == max(lengths)
        assert sorted(order) == list(range(803))


def test_sampler_resumes_mid_epoch_where_it_stopped():
    sampler = LengthGroupedSampler([i % 9 for i in range(50)], batch_size=5, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume(epoch=2, batches_done=3)
    assert list(sampler) == full[15:]
    assert list(sampler) == full  # the skip applies once
    assert len(sampler) == 50  # Lightning counts the batches already done itself

"""Batching for training and evaluation: token ids once up front, a seeded, resumable, length-grouped order, and
batches padded to their longest member (never to ``max_length``). Needs neither Lightning nor a model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


def tokenize(
    tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int
) -> dict[str, list[list[int]]]:
    """Token ids without padding (pairs as pairs, ``longest_first`` truncation); the collator pads per batch."""
    encoded = tokenizer(
        list(texts),
        text_pair=list(pairs) if pairs is not None else None,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    return {k: v for k, v in encoded.items() if k in ("input_ids", "token_type_ids")}


class TokenizedDataset(Dataset):
    """Token ids (and optional targets) per row; items carry their row index so the order can be traced."""

    def __init__(self, features: dict[str, list[list[int]]], targets: torch.Tensor | None = None) -> None:
        self.features = features
        self.targets = targets
        self.lengths = [len(ids) for ids in features["input_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[index] for k, v in self.features.items()}
        item["index"] = index
        if self.targets is not None:
            item["labels"] = self.targets[index]
        return item


class PaddingCollator:
    """Pads a batch to its longest member (never to max_length). Module-level and picklable for worker processes."""

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        input_ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        token_type_ids = torch.zeros((len(items), longest), dtype=torch.long) if "token_type_ids" in items[0] else None
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            span = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            input_ids[row, span] = torch.tensor(item["input_ids"], dtype=torch.long)
            attention_mask[row, span] = 1
            if token_type_ids is not None:
                token_type_ids[row, span] = torch.tensor(item["token_type_ids"], dtype=torch.long)
        batch["input_ids"] = input_ids
        batch["attention_mask"] = attention_mask
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        if "labels" in items[0]:
            batch["labels"] = torch.stack([item["labels"] for item in items])
        return batch


class LengthGroupedSampler(Sampler[int]):
    """A seeded shuffle that keeps texts of similar length in the same batch, and can resume mid-epoch.

    Each epoch (seed + epoch) draws a permutation, cuts it into mega-batches of ``group_size`` batches, sorts each
    by length and cuts it into batches, then shuffles the order of the full batches (a short remainder goes last)
    and moves the batch with the longest text to the front, as the Trainer's ``group_by_length`` does: a batch too
    big for the memory fails at the first step, not hours in, and the allocator meets its largest batch first, so
    later batches reuse that memory instead of growing the heap around smaller blocks.
    Consecutive runs of ``batch_size`` indices are exactly those batches, so a plain ``BatchSampler`` on top
    reproduces them. ``resume(epoch, samples_done)`` makes the next pass over that epoch skip what was trained.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_size: int = 50) -> None:
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.group_size = group_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, samples_done: int) -> None:
        self._resume = (epoch, samples_done)

    def order(self, epoch: int) -> list[int]:
        """The full order of sample indices for ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        permutation = torch.randperm(len(self.lengths), generator=generator)
        mega = self.batch_size * self.group_size
        full_batches: list[torch.Tensor] = []
        remainder: list[torch.Tensor] = []
        for start in range(0, len(permutation), mega):
            group = permutation[start : start + mega]
            group = group[torch.argsort(self.lengths[group], descending=True, stable=True)]
            for b in range(0, len(group), self.batch_size):
                batch = group[b : b + self.batch_size]
                (full_batches if len(batch) == self.batch_size else remainder).append(batch)
        shuffled = torch.randperm(len(full_batches), generator=generator).tolist()
        batches = [full_batches[i] for i in shuffled]
        if batches:
            longest = max(
                range(len(batches)), key=lambda i: int(self.lengths[batches[i][0]])
            )  # sorted: [0] is the longest
            batches[0], batches[longest] = batches[longest], batches[0]
        batches += remainder
        return torch.cat(batches).tolist() if batches else []

    def __iter__(self) -> Iterator[int]:
        # A generator: the epoch is read at the first draw, after Lightning has called set_epoch.
        order = self.order(self.epoch)
        if self._resume is not None:
            epoch, samples_done = self._resume
            self._resume = None
            if epoch == self.epoch:
                order = order[samples_done:]
        yield from order

    def __len__(self) -> int:
        # The full epoch, also when resuming: Lightning counts the batches already done itself.
        return len(self.lengths)


class SortedSampler(Sampler[int]):
    """Evaluation order: longest first, so batches hold similar lengths and pad little. Metrics ignore order."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

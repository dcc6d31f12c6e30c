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


def tokenize_windows(
    tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int, stride: int
) -> tuple[dict[str, list[list[int]]], list[int]]:
    """Token ids of every window of ``max_length`` tokens (consecutive windows of a text share ``stride`` tokens; a
    text pair is windowed along its first text, the second whole in each window) and, per window, its text's
    index. A text within the limit is one window, the same ids ``tokenize`` gives. Raises ``ValueError`` where a
    window has no room (a stride too large, a second text too long)."""
    specials = tokenizer.num_special_tokens_to_add(pair=pairs is not None)
    room = max_length - specials
    if pairs is not None:
        second = tokenizer(list(pairs), add_special_tokens=False, return_attention_mask=False)["input_ids"]
        for i, ids in enumerate(second):
            if room - len(ids) <= stride:
                raise ValueError(f"the second text of row {i + 1} leaves no room for windows of its first text")
    elif stride >= room:
        raise ValueError(f"stride {stride} leaves no room within windows of {max_length} tokens")
    encoded = tokenizer(
        list(texts),
        text_pair=list(pairs) if pairs is not None else None,
        truncation="only_first" if pairs is not None else True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        padding=False,
        return_attention_mask=False,
    )
    features = {k: v for k, v in encoded.items() if k in ("input_ids", "token_type_ids")}
    return features, [int(i) for i in encoded["overflow_to_sample_mapping"]]


def combine_by_document(
    logits: torch.Tensor, documents: torch.Tensor, combine: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per document of a batch (by ascending id), the mean (or max) of its windows' logits, and the position of its
    first window in the batch (where its label is read)."""
    unique, inverse = torch.unique(documents, return_inverse=True)
    count = len(unique)
    if combine == "max":
        combined = torch.full((count, logits.shape[1]), float("-inf"), dtype=logits.dtype, device=logits.device)
        combined = combined.scatter_reduce(0, inverse.unsqueeze(1).expand_as(logits), logits, "amax")
    else:
        combined = torch.zeros(count, logits.shape[1], dtype=logits.dtype, device=logits.device)
        combined = combined.index_add(0, inverse, logits)
        windows = torch.bincount(inverse, minlength=count).to(logits.dtype).unsqueeze(1)
        combined = combined / windows
    first = torch.full((count,), len(documents), dtype=torch.long, device=documents.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(documents), device=documents.device), "amin")
    return combined, first


class TokenizedDataset(Dataset):
    """Token ids (and optional targets) per row; items carry their row index so the order can be traced."""

    def __init__(
        self,
        features: dict[str, list[list[int]]],
        targets: torch.Tensor | None = None,
        documents: list[int] | None = None,
    ) -> None:
        self.features = features
        self.targets = targets
        self.lengths = [len(ids) for ids in features["input_ids"]]
        self.documents = documents  # chunked long texts: per window, its row (document) in the file

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[index] for k, v in self.features.items()}
        item["index"] = index
        if self.targets is not None:
            item["labels"] = self.targets[index]
        if self.documents is not None:
            item["document"] = self.documents[index]
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
        if "document" in items[0]:
            batch["document"] = torch.tensor([item["document"] for item in items], dtype=torch.long)
        return batch


class LengthGroupedSampler(Sampler[int]):
    """A seeded shuffle that keeps texts of similar length in the same batch, split across processes, resumable
    mid-epoch.

    Each epoch (seed + epoch) draws a permutation, cuts it into mega-batches of ``group_size`` global batches, sorts
    each by length and cuts it into global batches of ``batch_size x num_replicas`` rows, then shuffles the order of
    the full ones (a short remainder goes last) and moves the batch with the longest text to the front, as the
    Trainer's ``group_by_length`` does: a batch too big for the memory fails at the first step, and the allocator
    meets its largest batch first. Process ``rank`` of ``num_replicas`` takes rows ``rank x batch_size`` to
    ``(rank + 1) x batch_size`` of each global batch, so every optimizer step sees the rows one process with batch
    ``batch_size x num_replicas`` would, whatever the number of processes. On several processes the rows that do
    not fill a last global batch sit that epoch out (each epoch shuffles anew); on one process they are the last,
    shorter batch.

    Consecutive runs of ``batch_size`` indices are this process's batches, so a plain ``BatchSampler`` on top
    reproduces them. ``resume(epoch, batches_done)`` makes the next pass over that epoch skip what was trained.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        group_size: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of {num_replicas} replicas")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.group_size = group_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        self._resume = (epoch, batches_done)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch``, in order (the remainder last, shorter)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        permutation = torch.randperm(len(self.lengths), generator=generator)
        size = self.global_batch_size
        full_batches: list[torch.Tensor] = []
        remainder: list[torch.Tensor] = []
        for start in range(0, len(permutation), size * self.group_size):
            group = permutation[start : start + size * self.group_size]
            group = group[torch.argsort(self.lengths[group], descending=True, stable=True)]
            for b in range(0, len(group), size):
                batch = group[b : b + size]
                (full_batches if len(batch) == size else remainder).append(batch)
        shuffled = torch.randperm(len(full_batches), generator=generator).tolist()
        batches = [full_batches[i] for i in shuffled]
        if batches:  # each is sorted, so its first row is its longest
            longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i][0]]))
            batches[0], batches[longest] = batches[longest], batches[0]
        return [batch.tolist() for batch in batches + remainder]

    def order(self, epoch: int) -> list[int]:
        """This process's sample indices for ``epoch``, in order."""
        own = []
        for batch in self.global_batches(epoch):
            if len(batch) == self.global_batch_size:
                own += batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            elif self.num_replicas == 1:
                own += batch
        return own

    def __iter__(self) -> Iterator[int]:
        # A generator: the epoch is read at the first draw, after Lightning has called set_epoch.
        order = self.order(self.epoch)
        if self._resume is not None:
            epoch, batches_done = self._resume
            self._resume = None
            if epoch == self.epoch:
                order = order[batches_done * self.batch_size :]
        yield from order

    def __len__(self) -> int:
        # The full epoch, also when resuming: Lightning counts the batches already done itself.
        if self.num_replicas == 1:
            return len(self.lengths)
        return len(self.lengths) // self.global_batch_size * self.batch_size


class SortedSampler(Sampler[int]):
    """Evaluation order: longest first, so batches hold similar lengths and pad little (metrics ignore order). On
    several processes, process ``rank`` takes every ``num_replicas``-th text: each text is evaluated exactly once,
    with no padding duplicates (processes may hold one text more or fewer)."""

    def __init__(self, lengths: Sequence[int], num_replicas: int = 1, rank: int = 0) -> None:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        self.order = order[rank::num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class DocumentBatches(Sampler[list[int]]):
    """Evaluation batches of chunked long texts: every window of a document in the same batch (so its windows'
    logits combine into one score per document), documents longest first, about ``batch_size`` windows a batch (a
    document of more windows is a batch of its own). On several processes, process ``rank`` takes every
    ``num_replicas``-th document: each is evaluated exactly once."""

    def __init__(
        self, lengths: Sequence[int], documents: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        windows: dict[int, list[int]] = {}
        for index, document in enumerate(documents):
            windows.setdefault(document, []).append(index)
        size = {d: sum(lengths[i] for i in w) for d, w in windows.items()}
        order = sorted(windows, key=lambda d: -size[d])[rank::num_replicas]
        self.batches: list[list[int]] = []
        current: list[int] = []
        for document in order:
            if current and len(current) + len(windows[document]) > batch_size:
                self.batches.append(current)
                current = []
            current += windows[document]
        if current:
            self.batches.append(current)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def padding_aware_splits(lengths: Sequence[int], max_batch: int, pass_cost_tokens: float) -> list[int]:
    """Where to cut texts sorted by length (longest first) into forward passes of at most ``max_batch``, so that
    the padded tokens plus ``pass_cost_tokens`` per pass are fewest: the start index of each pass.

    A pass costs a fixed amount (on a CPU, reading every weight once: about 64 tokens' worth for BERT models) plus
    its padded tokens (count x its longest). Cutting 24 mixed texts where their lengths jump, not every 64, runs
    them about 1.5x faster; for long sorted runs of similar texts it gives the usual full batches."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[i]: least cost of the first i texts
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max_batch), end):
            cost = best[start] + pass_cost_tokens + (end - start) * lengths[start]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    starts, end = [], n
    while end > 0:
        starts.append(cut[end])
        end = cut[end]
    return starts[::-1]

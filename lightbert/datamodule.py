"""The LightningDataModule: training, validation and test files, tokenized and batched for a classifier."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from lightbert.batching import (
    DocumentBatches,
    LengthGroupedSampler,
    PaddingCollator,
    SortedSampler,
    TokenizedDataset,
    tokenize,
    tokenize_windows,
)
from lightbert.bundled import SST2_TRAIN, SST2_VALIDATION, default_base_model
from lightbert.checkpoint import tokenizer_from_files
from lightbert.defaults import SMALL_DATA, fitted_batch_size
from lightbert.errors import LightbertError, note
from lightbert.hf import (
    check_model_dir,
    check_tokenizer_fits,
    config_from_dict,
    effective_max_length,
    head_labels,
    load_config,
    load_tokenizer,
    unknown_token_warning,
)
from lightbert.labels import LabelEncoder, Task, check_task
from lightbert.loader import starting_point
from lightbert.tables import check_data_file, column_keys, fingerprint, read_table, select_columns

MIN_LENGTH = 4  # a special token on each side of a text, and room for it
LABELS_SHOWN = 10  # the labels fit names before it says how many more
UNKNOWN_SAMPLE = 512  # training texts the unknown-token check tokenizes


@dataclass
class Rows:
    """The texts, optional second texts and raw labels of a data file, row by row."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]

    def subset(self, ids: list[int]) -> Rows:
        pairs = [self.pairs[i] for i in ids] if self.pairs is not None else None
        return Rows([self.texts[i] for i in ids], pairs, [self.labels[i] for i in ids])


class ClassificationDataModule(pl.LightningDataModule):
    """Texts (or text pairs) and labels from CSV/TSV/JSONL/Parquet files, tokenized for a sequence classifier.

    Args:
        train: training file. None means the bundled SST-2 sample (with its validation file).
        validation: validation file. None means a seeded ``val_fraction`` split of the training file.
        test: optional test file, for ``lightbert test``.
        text_column: column with the text, by name or 0-based position (default: text/sentence/..., else 0).
        text_pair_column: column with the second text of a pair (default: sentence2/text_pair/... if present).
        label_column: column with the label, by name or position (default: label/..., else the last column).
        task: single_label, multi_label or regression; inferred from the training labels when not given.
        labels: label names in the order of the model's outputs; default: from the training data.
        label_delimiter: separator of several labels in one cell, for multi-label text files (default ',').
        header: whether CSV/TSV files have a header row; detected when not given.
        max_length: longest input in tokens; clamped to the model's position limit.
        batch_size: texts per training batch (default: fitted to the number of training examples, 16 below
            10,000 and 32 from there; ``lightbert.defaults``).
        eval_batch_size: texts per validation/test batch (default: 2 x batch_size).
        val_fraction: share of the training file held out for validation when no validation file is given.
        seed: seed of the validation split and of the training order.
        num_workers: DataLoader worker processes.
        tokenizer: where the tokenizer comes from: a Hugging Face directory, or the checkpoint fine-tuning starts
            from (default: the bundled MiniLM); the CLI links it to ``--model.base`` (``--model.recipe_base``).
        long_texts: a text longer than max_length: ``truncate`` it, or ``chunk`` it into windows of max_length that
            overlap by ``stride`` tokens; training then learns from every window with its text's label, and
            validation scores each text once, from the mean of its windows' logits.
        stride: chunk: tokens each window shares with the previous one (default: a quarter of max_length).
    """

    def __init__(
        self,
        train: str | None = None,
        validation: str | None = None,
        test: str | None = None,
        text_column: int | str | None = None,
        text_pair_column: int | str | None = None,
        label_column: int | str | None = None,
        task: Task | None = None,
        labels: list[str] | None = None,
        label_delimiter: str | None = None,
        header: bool | None = None,
        max_length: int = 128,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 42,
        num_workers: int = 0,
        tokenizer: str | None = None,
        long_texts: Literal["truncate", "chunk"] = "truncate",
        stride: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_given = train is not None
        self.validation_given = validation is not None
        if train is None:
            train, validation = str(SST2_TRAIN), validation or str(SST2_VALIDATION)
        check_task(task)
        if batch_size is not None and batch_size < 1:
            raise LightbertError(f"batch_size must be at least 1, not {batch_size}", "pass --data.batch_size 32")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise LightbertError(
                f"eval_batch_size must be at least 1, not {eval_batch_size}", "pass --data.eval_batch_size 64"
            )
        if max_length < MIN_LENGTH:
            raise LightbertError(
                f"max_length must be at least {MIN_LENGTH} tokens, not {max_length}", "pass --data.max_length 128"
            )
        if num_workers < 0:
            raise LightbertError(f"num_workers must be 0 or more, not {num_workers}", "pass --data.num_workers 0")
        if label_delimiter is not None and not label_delimiter:
            raise LightbertError("label_delimiter must not be empty", "pass --data.label_delimiter ',' or leave it out")
        if labels is not None and (len(set(labels)) != len(labels) or not all(str(name).strip() for name in labels)):
            raise LightbertError(
                f"labels must be distinct, non-empty names, not {labels}", "pass --data.labels [negative, positive]"
            )
        if long_texts not in ("truncate", "chunk"):
            raise LightbertError(f"unknown long_texts {long_texts!r}", "pass --data.long_texts truncate or chunk")
        if stride is not None and not 0 <= stride < max_length - 2:
            raise LightbertError(
                f"stride must be 0 or more and below max_length less its special tokens, not {stride}",
                f"pass --data.stride {max_length // 4}",
            )
        if not 0.0 < val_fraction < 1.0:
            raise LightbertError(
                f"val_fraction must be between 0 and 1, not {val_fraction}", "pass --data.val_fraction 0.1"
            )
        for path in (train, validation, test):
            if path is not None:  # fail before any run directory or model exists
                check_data_file(path)
        self.train_path, self.validation_path, self.test_path = train, validation, test
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.task = task
        self.labels = labels
        self.label_delimiter = label_delimiter
        self.header = header
        self.requested_max_length = max_length
        self.max_length = max_length
        self.batch_size: int = batch_size  # type: ignore[assignment]  # None until setup fits it to the data
        self.requested_eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.tokenizer_path = tokenizer
        self.long_texts = long_texts
        self.stride = stride
        self.paired = text_pair_column is not None
        self.tokenizer: Any = None
        self.base_config: Any = None
        self.encoder: LabelEncoder | None = None
        self.datasets: dict[str, TokenizedDataset] = {}
        self.train_sampler: LengthGroupedSampler | None = None
        self._resume_state: dict[str, int] | None = None
        self._checkpoint_labels = False
        self._fingerprints: dict[str, Any] | None = None
        self.train_columns: tuple[Any, Any, Any] | None = None  # the keys of the columns read from train
        self.train_label_counts: list[int] | None = None
        self.recorded_files_note: str | None = None  # what use_checkpoint took from the checkpoint, said by the CLI

    @property
    def eval_batch_size(self) -> int:
        """Texts per validation/test batch: as given, else twice the training batch (or 64 before it is fitted)."""
        return self.requested_eval_batch_size or 2 * (self.batch_size or fitted_batch_size(SMALL_DATA))

    def use_checkpoint(self, section: dict[str, Any]) -> None:
        """Read data for a lightbert checkpoint (its lightbert section) that is resumed or evaluated: its tokenizer,
        its position limit, and its task and labels (which the data must have). To validate or test it, no training
        file is needed."""
        for option, given, own in (("task", self.task, section["task"]), ("labels", self.labels, section["labels"])):
            if given is not None and given != own:
                raise LightbertError(
                    f"--data.{option} {given} is not the checkpoint's ({own})", f"leave --data.{option} out"
                )
        self.tokenizer = tokenizer_from_files(section["tokenizer_files"])
        self.base_config = config_from_dict(section["hf_config"])
        self.max_length = effective_max_length(self.requested_max_length, self.tokenizer, self.base_config)
        self.task, self.labels = section["task"], section["labels"]
        self.label_delimiter = self.label_delimiter or (section.get("data") or {}).get("label_delimiter")
        self._checkpoint_labels = True

    def use_recorded_files(self, section: dict[str, Any], stage: str, path: str | Path) -> None:
        """For ``validate``/``test`` of a checkpoint given no data options: the files its run recorded, unchanged
        since (size and SHA-256), with its columns and its split; never the bundled sample unless that is what the
        run trained on."""
        role = "validation" if stage == "validate" else "test"
        given = (self.validation_given or self.train_given) if role == "validation" else self.test_path is not None
        if given:
            return
        files = section.get("data_files")
        option = "--data.validation" if role == "validation" else "--data.test"
        if not isinstance(files, dict) or not isinstance(files.get("train"), dict):
            raise LightbertError(
                f"{path} does not record its data files, and no {option} was given", f"pass {option} FILE"
            )
        recorded = files.get(role) or (files["train"] if role == "validation" else None)
        if recorded is None:
            raise LightbertError(f"the run of {path} had no test file", "pass --data.test FILE")
        current = Path(recorded["path"])
        if not current.is_file():
            raise LightbertError(f"{current}, the {role} file recorded in {path}, is gone", f"pass {option} FILE")
        now = fingerprint(current)
        if (now["size"], now["sha256"]) != (recorded["size"], recorded["sha256"]):
            raise LightbertError(
                f"{current}, the {role} file recorded in {path}, has changed since the run",
                f"pass {option} FILE to use it as it is now",
            )
        data = section.get("data") or {}
        for name in ("text_column", "text_pair_column", "label_column"):
            if getattr(self, name) is None:
                setattr(self, name, data.get(name))
        if role == "test":
            self.test_path = str(current)
        elif files.get("validation") is not None:
            self.validation_path = str(current)
        else:  # validation was a seeded split of the training file: the same rows again
            split = files.get("split") or {}
            self.train_path, self.validation_path, self.train_given = str(current), None, True
            self.val_fraction = float(split.get("val_fraction", self.val_fraction))
            self.seed = int(split.get("seed", self.seed))
            self.header = split.get("header", self.header)
        how = "" if files.get(role) is not None else f" (its held-out {self.val_fraction:g} split)"
        self.recorded_files_note = f"{role} data: {current}{how}, as recorded in the checkpoint and unchanged"

    def file_fingerprints(self) -> dict[str, Any]:
        """The data files this module reads, by contents (``tables.fingerprint``), and how validation was split
        off the training file when it was: what a checkpoint records to validate again or resume on the same data."""
        if self._fingerprints is None:
            self._fingerprints = {
                "train": fingerprint(self.train_path),
                "validation": fingerprint(self.validation_path) if self.validation_path is not None else None,
                "test": fingerprint(self.test_path) if self.test_path is not None else None,
                "split": {"val_fraction": self.val_fraction, "seed": self.seed, "header": self.header},
            }
        return self._fingerprints

    def describe(self) -> list[str]:
        """What fit inferred from the data, a line each: the task, the labels (with their training counts) and the
        columns read."""
        assert self.task is not None
        given = self.hparams.get("task") is not None
        lines = [f"task: {self.task} ({'--data.task' if given else 'inferred from the labels; --data.task to choose'})"]
        if self.labels is not None:
            counts = self.train_label_counts or []
            shown = [f"{name} ({counts[i]:,})" if i < len(counts) else str(name) for i, name in
                     enumerate(self.labels[:LABELS_SHOWN])]  # fmt: skip
            more = f", … ({len(self.labels) - LABELS_SHOWN} more)" if len(self.labels) > LABELS_SHOWN else ""
            per = "training rows" if self.task == "single_label" else "training rows with it"
            lines.append(f"labels: {len(self.labels)}, with their {per}: {', '.join(shown)}{more}")
        if self.train_columns is not None:
            text, pair, label = self.train_columns
            parts = [f"text {text!r}"] + ([f"text_pair {pair!r}"] if pair is not None else []) + [f"label {label!r}"]
            lines.append(f"columns of {Path(self.train_path).name}: {', '.join(parts)}")
        return lines

    # -- settings the model and the checkpoint need -------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What a checkpoint must remember to read new data the same way (JSON-safe). The task and the labels are
        the checkpoint's own (said once, beside the config), not repeated here."""
        return {
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": self.label_column,
            "label_delimiter": self.label_delimiter,
            "max_length": self.max_length,
            "paired": self.paired,
            "long_texts": self.long_texts,
            "stride": self.stride,
        }

    # -- reading -----------------------------------------------------------------------------------------------

    def _read(self, path: str) -> Rows:
        expected = [self.text_column, self.text_pair_column, self.label_column]
        table = read_table(path, self.header, expected_columns=expected)
        texts, pairs, labels = select_columns(table, path, self.text_column, self.text_pair_column, self.label_column)
        if path == self.train_path:
            self.train_columns = column_keys(table, path, self.text_column, self.text_pair_column, self.label_column)
        return Rows(texts, pairs, labels or [])

    def _ensure_tokenizer(self) -> None:
        if self.tokenizer is not None:
            return
        path = self.tokenizer_path or default_base_model()
        if Path(path).is_dir():
            self.tokenizer, self.base_config = load_tokenizer(check_model_dir(path)), load_config(path)
        else:  # the model fine-tuning starts from is a checkpoint: its tokenizer and config
            start = starting_point(path)
            self.tokenizer, self.base_config = start.tokenizer(), start.config
        check_tokenizer_fits(self.tokenizer, self.base_config, str(path))
        self.max_length = effective_max_length(self.requested_max_length, self.tokenizer, self.base_config)

    def _dataset(self, rows: Rows, source: str) -> TokenizedDataset:
        assert self.encoder is not None
        targets = self.encoder.encode(rows.labels, source)
        if self.long_texts == "chunk":
            stride = self.stride if self.stride is not None else self.max_length // 4
            try:
                features, documents = tokenize_windows(self.tokenizer, rows.texts, rows.pairs, self.max_length, stride)
            except ValueError as err:
                hint = "pass a smaller --data.stride, or --data.long_texts truncate"
                raise LightbertError(f"{source}: {err}", hint) from None
            return TokenizedDataset(features, targets[torch.tensor(documents)], documents)
        return TokenizedDataset(tokenize(self.tokenizer, rows.texts, rows.pairs, self.max_length), targets)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if stage == "test" and self.test_path is None:
            raise LightbertError("no test file was given", "pass --data.test FILE")
        self._ensure_tokenizer()
        if stage in ("validate", "test") and self._checkpoint_labels and not self.train_given:
            self._setup_evaluation(stage)
            return
        train = self._read(self.train_path)
        self.paired = train.pairs is not None
        warning = unknown_token_warning(self.tokenizer, train.texts[:UNKNOWN_SAMPLE], f"{Path(self.train_path).name}")
        if warning and stage == "fit":
            note(warning)
        if self.validation_path is None:
            generator = torch.Generator().manual_seed(self.seed)
            permutation = torch.randperm(len(train.texts), generator=generator).tolist()
            n_val = max(1, round(len(train.texts) * self.val_fraction))
            if n_val >= len(train.texts):
                raise LightbertError(
                    f"{self.train_path} has too few rows ({len(train.texts)}) to split off validation",
                    "give --data.validation",
                )
            train, validation = train.subset(sorted(permutation[n_val:])), train.subset(sorted(permutation[:n_val]))
        else:
            validation = self._read(self.validation_path)
            if (validation.pairs is not None) != self.paired:
                raise LightbertError(
                    f"{self.validation_path} and {self.train_path} differ in having a second text column",
                    "use the same columns",
                )
        self.encoder = LabelEncoder.fit(
            train.labels, self.task, self.labels, self.label_delimiter, str(self.train_path)
        )
        if self.labels is None and self.encoder.labels is not None:
            # Continuing from a fine-tuned classifier with the same labels: keep its label order, and so its head.
            base_labels = head_labels(self.base_config)
            if base_labels is not None and set(base_labels) == set(self.encoder.labels):
                self.encoder.labels = base_labels
        self.task, self.labels = self.encoder.task, self.encoder.labels  # type: ignore[assignment]
        if self.labels is not None:
            targets = self.encoder.encode(train.labels, str(self.train_path))
            if self.task == "single_label":
                tally = Counter(targets.tolist())
                self.train_label_counts = [tally.get(i, 0) for i in range(len(self.labels))]
            else:
                self.train_label_counts = [int(n) for n in targets.sum(dim=0).tolist()]
        self.datasets["train"] = self._dataset(train, str(self.train_path))
        if self.batch_size is None:
            self.batch_size = fitted_batch_size(len(self.datasets["train"]))
            self.hparams["batch_size"] = self.batch_size  # the checkpoint (and hparams.yaml) records the value used
            self._hparams_initial["batch_size"] = self.batch_size
        self.datasets["validation"] = self._dataset(validation, str(self.validation_path or self.train_path))
        if self.test_path is not None:
            self.datasets["test"] = self._dataset(self._read(self.test_path), str(self.test_path))

    def _setup_evaluation(self, stage: str) -> None:
        """The validation or test data of a checkpoint (``use_checkpoint``), without a training file."""
        assert self.task is not None
        self.encoder = LabelEncoder(self.task, self.labels, self.label_delimiter)
        name, path = ("validation", self.validation_path) if stage == "validate" else ("test", self.test_path)
        if path is not None:
            rows = self._read(path)
            self.paired = rows.pairs is not None
            self.datasets[name] = self._dataset(rows, str(path))

    # -- loaders -----------------------------------------------------------------------------------------------

    def _loader(self, dataset: TokenizedDataset, sampler: Sampler[Any], batch_size: int) -> DataLoader:
        if self.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        batches = (
            sampler if isinstance(sampler, DocumentBatches) else BatchSampler(sampler, batch_size, drop_last=False)
        )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=PaddingCollator(self.tokenizer.pad_token_id or 0, self.tokenizer.padding_side),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # An own generator: creating an iterator must not draw from the global RNG that dropout uses,
            # or a resumed run would see different dropout masks than an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def processes(self) -> tuple[int, int]:
        """How many processes train or evaluate together, and which one this is (1, 0 without a Trainer)."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        replicas, rank = self.processes()
        connector = getattr(self.trainer, "_accelerator_connector", None)
        if replicas > 1 and getattr(connector, "use_distributed_sampler", False):
            raise LightbertError(
                "the Trainer would replace lightbert's sampler, which splits the batches across processes itself",
                "pass use_distributed_sampler=False to the Trainer (lightbert fit does)",
            )
        self.train_sampler = LengthGroupedSampler(
            dataset.lengths, self.batch_size, seed=self.seed, num_replicas=replicas, rank=rank
        )
        if self._resume_state is not None:
            self.check_resume_layout(self._resume_state, replicas, self.batch_size)
            self.train_sampler.resume(self._resume_state["epoch"], self._resume_state["batches_done"])
            self._resume_state = None
        return self._loader(dataset, self.train_sampler, self.batch_size)

    @staticmethod
    def check_resume_layout(state: dict[str, int], replicas: int, batch_size: int) -> None:
        """Resuming must see the global batches the interrupted run saw: the same processes x batch size."""
        saved = (state.get("world_size", 1), state.get("batch_size", batch_size))
        if saved != (replicas, batch_size):
            raise LightbertError(
                f"the checkpoint was written by {saved[0]} process(es) x batch {saved[1]}, this run has {replicas} x"
                f" {batch_size}: the batches would differ",
                f"resume with {saved[0]} process(es) (--trainer.devices x --trainer.num_nodes) and --data.batch_size"
                f" {saved[1]}",
            )

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("validation")

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise LightbertError("no test file was given", "pass --data.test FILE")
        return self._evaluation_loader("test")

    def _evaluation_loader(self, name: str) -> DataLoader:
        dataset = self.datasets[name]
        replicas, rank = self.processes()
        if dataset.documents is not None:  # chunked: each document's windows in one batch, scored together
            batches = DocumentBatches(dataset.lengths, dataset.documents, self.eval_batch_size, replicas, rank)
            return self._loader(dataset, batches, self.eval_batch_size)
        return self._loader(dataset, SortedSampler(dataset.lengths, replicas, rank), self.eval_batch_size)

    # -- exact resume: where in the epoch the checkpoint was taken ------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or self.train_sampler is None:
            return {}
        progress: Any = trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "epoch": int(trainer.current_epoch),
            "batches_done": int(progress.processed),
            "world_size": self.train_sampler.num_replicas,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not state_dict:
            return
        state = {key: int(value) for key, value in state_dict.items()}
        if "batches_done" not in state:  # written before 0.2: one process, rows done
            state["batches_done"] = state.pop("samples_done") // self.batch_size
        self._resume_state = state

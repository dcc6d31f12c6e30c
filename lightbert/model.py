"""The LightningModule: a Hugging Face ``AutoModelForSequenceClassification`` trained the right way.

What the common recipe gets wrong and this module does not: dropout is switched on for training (Lightning >= 2.2
keeps ``from_pretrained``'s eval mode), weights load in float32 whatever the config's dtype, the optimizer is
``torch.optim.AdamW`` without decay on biases and LayerNorm weights, the LR schedule steps per optimizer step,
and every checkpoint carries the config, tokenizer, labels and RNG state needed to load it or resume exactly.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
import torchmetrics
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.nn import functional

from lightbert.batching import combine_by_document
from lightbert.bundled import default_base_model
from lightbert.checkpoint import (
    build_section,
    capture_rng_state,
    restore_rng_state,
    tokenizer_files,
    tokenizer_from_files,
)
from lightbert.classifier import Classifier
from lightbert.defaults import SMALL_DATA, fitted_learning_rate
from lightbert.errors import LightbertError, note
from lightbert.fastpath import (
    use_cpu_dropout,
    use_first_position_only,
    use_gelu_recompute,
    use_resident_embedding_gradient,
)
from lightbert.hf import THRESHOLDS_KEY, HeadPlan, head_order, plan_head
from lightbert.labels import THRESHOLD_STEPS, ClassWeights, best_f1_thresholds, class_weights, score_steps
from lightbert.loader import (
    StartingPoint,
    build_from_start,
    classifier_from_config,
    recipe_adamw_state,
    starting_point,
)
from lightbert.sources import KIND_NAMES, ModelInfo, ModelSource, identify


def build_metrics(task: str, num_labels: int) -> torchmetrics.MetricCollection:
    """Validation/test metrics per task: accuracy and macro-F1; micro/macro-F1; MSE, Pearson, Spearman."""
    tm = torchmetrics
    metrics: dict[str, torchmetrics.Metric | torchmetrics.MetricCollection]
    if task == "single_label":
        metrics = {
            "accuracy": tm.classification.MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1_macro": tm.classification.MulticlassF1Score(num_classes=num_labels, average="macro"),
        }
    elif task == "multi_label":
        metrics = {
            "f1_micro": tm.classification.MultilabelF1Score(num_labels=num_labels, average="micro"),
            "f1_macro": tm.classification.MultilabelF1Score(num_labels=num_labels, average="macro"),
        }
    else:
        metrics = {"mse": tm.MeanSquaredError(), "pearson": tm.PearsonCorrCoef(), "spearman": tm.SpearmanCorrCoef()}
    return tm.MetricCollection(metrics)


METRIC_NAMES = {
    "single_label": ("accuracy", "f1_macro"),
    "multi_label": ("f1_micro", "f1_macro"),
    "regression": ("mse", "pearson", "spearman"),
}


def logged_metrics(task: str) -> list[str]:
    """The names a run of ``task`` logs, which ``--checkpoint.monitor`` can watch."""
    return ["train_loss", "val_loss", *(f"val_{name}" for name in METRIC_NAMES[task])]


class ScoreHistograms(torchmetrics.Metric):
    """Per label, how many positive and negative rows scored in each step of 1/1000 (summed across processes): what
    picking each label's F1-best threshold needs, in fixed memory."""

    full_state_update = False
    positives: torch.Tensor
    negatives: torch.Tensor

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        shape = (num_labels, THRESHOLD_STEPS + 1)
        self.add_state("positives", default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("negatives", default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        steps = torch.from_numpy(score_steps(probs.float())).to(self.positives.device)
        truth = targets.bool().to(steps.device)
        for label in range(steps.shape[1]):
            ones = torch.ones_like(steps[:, label])
            self.positives[label].index_add_(0, steps[truth[:, label], label], ones[truth[:, label]])
            self.negatives[label].index_add_(0, steps[~truth[:, label], label], ones[~truth[:, label]])

    def compute(self) -> list[tuple[float, float]]:
        return best_f1_thresholds(self.positives.cpu().numpy(), self.negatives.cpu().numpy())


def no_decay_parameter_ids(model: nn.Module) -> set[int]:
    """Biases and normalisation weights, which weight decay should not shrink (found by module type, not by
    name, so it holds for BERT's ``LayerNorm``, DistilBERT's ``sa_layer_norm`` and others alike)."""
    ids = set()
    for module in model.modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()
        for name, parameter in module.named_parameters(recurse=False):
            if is_norm or name == "bias":
                ids.add(id(parameter))
    return ids


def linear_warmup_decay(warmup_steps: int, total_steps: float) -> Callable[[int], float]:
    """LR factor: linear warmup from 0 to 1, then linear decay to 0 at ``total_steps`` (constant if unbounded)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if not math.isfinite(total_steps):
            return 1.0
        return max(0.0, (total_steps - step) / max(1.0, total_steps - warmup_steps))

    return factor


class SequenceClassifier(pl.LightningModule):
    """Fine-tunes a BERT-family sequence classifier. Its task, labels and tokenizer come from the
    ``ClassificationDataModule`` (the one source of truth) or, for a checkpoint, from the checkpoint.

    Args:
        base: the model to start from (default: the bundled all-MiniLM-L6-v2): a Hugging Face model directory, a
            lightbert checkpoint (its weights, labels and tokenizer, to fine-tune further with a fresh optimizer and
            schedule), or a recipe checkpoint (its config and tokenizer from recipe_base, or from a hyper-parameter
            naming a local model directory).
        learning_rate: peak learning rate of AdamW (default: fitted to the number of training examples, 8e-5
            below 10,000 and 5e-5 from there; ``lightbert.defaults``).
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        warmup_ratio: share of the optimizer steps spent warming the learning rate up linearly from 0.
        warmup_steps: number of warmup steps; overrides warmup_ratio when given.
        new_head: when base is already a fine-tuned classifier for other labels, start a new head (its
            label-dependent weights re-initialised) instead of stopping with an error.
        recipe_base: for a recipe checkpoint as base: the Hugging Face directory of the same architecture that
            gives its config and tokenizer.
        carry_optimizer: for a recipe checkpoint as base: also take its AdamW moments and step counts (carrying
            the recipe's run on; the learning-rate schedule starts anew).
        class_weights: weigh the loss for imbalanced labels: ``balanced`` (counted on the training data), or one
            weight per label (a list in label order, or a mapping by label name). Single-label: class weights of the
            cross-entropy; multi-label: each label's positive weight. Stored in the checkpoint and restored on resume.
        tune_thresholds: multi-label: pick each label's threshold to maximise its F1 on the validation data (at every
            validation; the checkpoint of a validation carries its thresholds, which predict, evaluate and serve use).
    """

    def __init__(
        self,
        base: str | None = None,
        learning_rate: float | None = None,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        warmup_steps: int | None = None,
        new_head: bool = False,
        recipe_base: str | None = None,
        carry_optimizer: bool = False,
        class_weights: ClassWeights | None = None,
        tune_thresholds: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if learning_rate is not None and learning_rate <= 0:
            raise LightbertError(
                f"learning_rate must be positive, not {learning_rate}", "pass --model.learning_rate 5e-5"
            )
        if not 0.0 <= warmup_ratio < 1.0:
            raise LightbertError(f"warmup_ratio must be in [0, 1), not {warmup_ratio}", "pass --model.warmup_ratio 0.1")
        if warmup_steps is not None and warmup_steps < 0:
            raise LightbertError(f"warmup_steps must be 0 or more, not {warmup_steps}", "pass --model.warmup_steps 100")
        if weight_decay < 0:
            raise LightbertError(f"weight_decay must be 0 or more, not {weight_decay}", "pass --model.weight_decay 0")
        self.base = base
        self.task: str | None = None
        self.labels: list[str] | None = None
        self.model: Any = None  # the Hugging Face model, built in setup (or from a checkpoint)
        self.tokenizer: Any = None
        self.data_settings: dict[str, Any] = {}
        self.training_config: str | None = None  # the resolved YAML config, set by the CLI
        self.data_files: dict[str, Any] | None = None  # the data files by contents (ClassificationDataModule)
        self._rng_to_restore: dict[str, Any] | None = None
        self._tokenizer_files: dict[str, Any] | None = None
        self._start: StartingPoint | None = None
        self._head_plan: HeadPlan | None = None
        self._carried_state: dict[str, Any] | None = None
        self.head_notes: list[str] = []  # which head weights preflight's build initialised, for the CLI to say
        self.loss_weights: list[float] | None = None  # resolved class_weights, in label order
        self.thresholds: dict[str, float] | None = None  # picked by tune_thresholds at the latest validation

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        trust_checkpoint: bool = False,
        **kwargs: Any,
    ) -> SequenceClassifier:
        """Lightning's ``load_from_checkpoint`` for lightbert checkpoints, with nothing else at hand: the file is
        checked and refused as ``lightbert.load`` would (weights_only reading, no imports named by
        hyper-parameters), and the Hugging Face model is built from the checkpoint's own config, labels and
        tokenizer. ``map_location`` and ``strict`` behave as Lightning documents."""
        source = identify(checkpoint_path, trust_checkpoint=trust_checkpoint)
        if source.kind != "lightbert":
            raise LightbertError(
                f"{checkpoint_path} is a {KIND_NAMES[source.kind]}, not a lightbert checkpoint",
                f"predict with lightbert.load({str(checkpoint_path)!r}), or fine-tune from it with"
                f" SequenceClassifier(base={str(checkpoint_path)!r})",
            )
        model = super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=not trust_checkpoint,
            **kwargs,
        )
        return model

    # -- building ----------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        self.take_labels_from(getattr(self.trainer, "datamodule", None) if self._trainer is not None else None)
        self.configure_classifier()

    def take_labels_from(self, datamodule: Any) -> None:
        """Task, labels, tokenizer and data settings from a set-up ``ClassificationDataModule``."""
        if datamodule is None or getattr(datamodule, "encoder", None) is None:
            raise LightbertError(
                "the model has no task and labels", "train with a ClassificationDataModule, which reads them"
            )
        self.task, self.labels = datamodule.task, datamodule.labels
        self.tokenizer = datamodule.tokenizer
        train = getattr(datamodule, "datasets", {}).get("train")
        if self.hparams["learning_rate"] is None:  # the checkpoint (and hparams.yaml) records the value used
            self.hparams["learning_rate"] = fitted_learning_rate(len(train) if train is not None else SMALL_DATA)
            cast(Any, self)._hparams_initial["learning_rate"] = self.hparams["learning_rate"]
        self.data_settings = datamodule.settings()
        fingerprints = getattr(datamodule, "file_fingerprints", None)
        self.data_files = fingerprints() if fingerprints is not None and train is not None else None
        if self.hparams["tune_thresholds"] and self.task != "multi_label":
            raise LightbertError(
                f"--model.tune_thresholds picks multi-label thresholds, and this data is {self.task}",
                "leave --model.tune_thresholds out",
            )
        spec = self.hparams["class_weights"]
        if spec is not None and self.loss_weights is None:
            targets = train.targets if train is not None else None
            self.loss_weights = class_weights(spec, self.task, list(self.labels or []), targets)

    def preflight(self, datamodule: Any, checkpoint: ModelSource | None = None, stage: str = "fit") -> None:
        """Check the model against the data before any training starts (the CLI calls this before it creates the
        Trainer): the base is complete and safe, a fine-tuned head fits the labels, and optimizer state to carry on
        maps onto the model. Given the (identified) lightbert ``checkpoint`` to resume or evaluate, the model is
        built from it instead, and its labels must be the data's."""
        self.take_labels_from(datamodule)
        if checkpoint is not None:
            if self.hparams["carry_optimizer"]:
                raise LightbertError(
                    "--model.carry_optimizer starts from a recipe checkpoint's optimizer, and --ckpt_path restores"
                    " lightbert's own",
                    "use one of the two",
                )
            if checkpoint.kind != "lightbert":
                raise not_resumable(checkpoint.path, checkpoint.kind, stage)
            for path in (self.base, self.hparams["recipe_base"]):
                if path is not None:  # not used here, but a path that is no model is still a mistake to report
                    identify(path)
            self._check_labels(checkpoint.section, checkpoint.path)
            if stage == "fit":  # validate and test may weigh their loss as they are told
                self._check_class_weights(checkpoint.section, checkpoint.path)
            self.build_from_checkpoint(checkpoint.section)
            return
        self._plan()
        if self.hparams["carry_optimizer"]:
            assert self._start is not None and self._head_plan is not None
            probe = classifier_from_config(self._start.config)
            self._carried_state = recipe_adamw_state(self._start, probe, head_order(self._head_plan))
        # before the run starts: a base whose weights do not fit stops it here; the CLI says what is new with the rest
        self.configure_classifier(say=self.head_notes.append)

    def _plan(self) -> None:
        assert self.task is not None
        if self._start is None:
            self._start = starting_point(self.base or default_base_model(), self.hparams["recipe_base"])
        if self.hparams["carry_optimizer"] and self._start.kind != "recipe":
            raise LightbertError(
                f"--model.carry_optimizer carries on a recipe checkpoint's optimizer, and {self._start.source.path}"
                f" is a {KIND_NAMES[self._start.kind]}",
                "leave --model.carry_optimizer out (to resume a lightbert run, pass --ckpt_path instead)",
            )
        self._head_plan = plan_head(
            self._start.config, self.task, self.labels, self.hparams["new_head"], self._start.source.path
        )
        if self.hparams["carry_optimizer"] and not self._head_plan.keep_head:
            raise LightbertError(
                f"--model.carry_optimizer needs the recipe's own head, and the data's labels"
                f" [{', '.join(self._head_plan.wanted)}] are not its [{', '.join(self._head_plan.base_head or [])}]",
                "leave --model.carry_optimizer out to start a new head with a fresh optimizer",
            )

    def configure_classifier(self, say: Callable[[str], None] = note) -> None:
        """Build the HF model from ``base`` with this task's head, in float32, from local files only (a fine-tuned
        base keeps its head for the same labels; other labels need ``new_head``, see ``lightbert.hf``); ``say``
        tells which head weights are new."""
        if self._head_plan is None:
            self._plan()
        assert self._start is not None and self._head_plan is not None and self.task is not None
        self.model = build_from_start(self._start, self._head_plan, self.task, self.labels, say)
        if hasattr(self.model.config, THRESHOLDS_KEY):  # the base's thresholds are not this run's
            delattr(self.model.config, THRESHOLDS_KEY)
        if self.hparams["carry_optimizer"] and self._carried_state is None:
            self._carried_state = recipe_adamw_state(self._start, self.model, head_order(self._head_plan))
        if self.tokenizer is None:
            self.tokenizer = self._start.tokenizer()
        self._finish_build()

    def build_from_checkpoint(self, section: dict[str, Any]) -> None:
        """Build the HF model from a lightbert checkpoint's section (its config; weights random until the state
        dict is loaded), with its task, labels, tokenizer and data settings."""
        self.task, self.labels = section["task"], section["labels"]
        self.data_settings = self.data_settings or dict(section.get("data") or {})
        self.tokenizer = self.tokenizer or tokenizer_from_files(section["tokenizer_files"])
        self.model = classifier_from_config(section["hf_config"])
        if section.get("class_weights") is not None and self.loss_weights is None:
            self.loss_weights = [float(w) for w in section["class_weights"]]
        self._finish_build()

    def _check_class_weights(self, section: dict[str, Any], path: str | Path) -> None:
        """Resuming continues with the checkpoint's class weights; other weights asked for are a mistake."""
        own = section.get("class_weights")
        if self.loss_weights is not None and (own is None or not np.allclose(own, self.loss_weights, rtol=1e-9)):
            raise LightbertError(
                f"{path} was trained with class weights {own}, and --model.class_weights gives {self.loss_weights}",
                "resume with the checkpoint's class weights (or leave --model.class_weights out)",
            )

    def _check_labels(self, section: dict[str, Any], path: str | Path) -> None:
        if self.task is None:
            return
        same_labels = self.task == "regression" or section.get("labels") == self.labels
        if section.get("task") != self.task or not same_labels:
            raise LightbertError(
                f"{path} was trained for {section.get('task')} {section.get('labels') or ''}, the data has"
                f" {self.task} {self.labels or ''}".rstrip(),
                f"resume with the data it was trained on, or fine-tune from it with --model.base {path}",
            )

    def classifier(self) -> Classifier:
        """This module's model as a ``Classifier`` (predicting, evaluating), sharing its weights."""
        info = ModelInfo(kind="lightbert", path="(in memory)", data=dict(self.data_settings))
        max_length = int(self.data_settings.get("max_length") or 512)
        return Classifier(self.model, self.tokenizer, max_length, info)

    def _finish_build(self) -> None:
        assert self.model is not None and self.task is not None
        self._forward_args = set(inspect.signature(self.model.forward).parameters)
        if getattr(self.model.config, "type_vocab_size", 2) <= 1:
            self._forward_args.discard("token_type_ids")  # one segment type (RoBERTa): a pair's 1s would not index
        # The same function, faster and leaner (lightbert.fastpath): dropout drawn ~3x cheaper on CPU (other
        # devices keep PyTorch's kernels), the last layer's feed-forward block computed only where the head reads,
        # and each GELU output recomputed in backward rather than kept.
        use_cpu_dropout(self.model)
        use_first_position_only(self.model)
        use_gelu_recompute(self.model)
        num_labels = self.model.config.num_labels
        self.val_metrics = build_metrics(self.task, num_labels).clone(prefix="val_")
        self.test_metrics = build_metrics(self.task, num_labels).clone(prefix="test_")
        # The loss as a metric too: its sum and row count are synced across processes, so a distributed run's loss
        # is the mean over every row (Lightning's own mean of logged values is off when processes hold different
        # numbers of rows), and every process agrees on the best checkpoint.
        self.val_loss = torchmetrics.MeanMetric()
        self.test_loss = torchmetrics.MeanMetric()
        self.val_scores = ScoreHistograms(num_labels) if self.hparams["tune_thresholds"] else None
        weights = torch.tensor(self.loss_weights or [], dtype=torch.float32)
        self.register_buffer("class_weight_tensor", weights, persistent=False)  # follows the module's device
        self.model.train()  # from_pretrained returns eval mode; training needs dropout (see on_train_start)

    # -- steps -------------------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        # Only the inputs this architecture takes: DistilBERT and RoBERTa have no token_type_ids.
        return self.model(**{k: v for k, v in batch.items() if k in self._forward_args})

    def on_train_start(self) -> None:
        # Lightning >= 2.2 does not call .train() on submodules and from_pretrained returns eval mode:
        # without this, dropout would silently stay off for the whole of training.
        self.model.train()
        if isinstance(self.trainer.strategy, SingleDeviceStrategy) and self.device.type == "cpu":
            # Its gradient bypasses autograd hooks, which multi-process strategies rely on.
            use_resident_embedding_gradient(self.model)

    def on_train_epoch_start(self) -> None:
        self.model.train()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            # The RNG as it was when the checkpoint was taken, right before the next dropout mask is drawn.
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # A run that ends on max_steps inside an epoch would otherwise end unvalidated, with no best checkpoint:
        # asking it to stop lets Lightning validate first (as it does for max_time and early stopping).
        trainer = self.trainer
        if 0 < trainer.max_steps <= trainer.global_step and trainer.enable_validation:
            trainer.should_stop = True

    def loss_and_logits(
        self, batch: dict[str, torch.Tensor], by_document: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss (weighted by ``class_weights`` when given), the logits and the labels of a labelled batch;
        ``by_document``: of chunked long texts, one row per document, from the mean of its windows' logits."""
        documents = batch.get("document") if by_document else None
        if not self.loss_weights and documents is None:
            output = self(batch)
            return output.loss, output.logits, batch["labels"]
        logits = self({k: v for k, v in batch.items() if k != "labels"}).logits
        labels = batch["labels"]
        if documents is not None:
            logits, first = combine_by_document(logits.float(), documents)
            labels = labels[first]
        return self.loss_of(logits, labels), logits, labels

    def loss_of(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss Hugging Face's heads compute, with the class weights when given."""
        weights: torch.Tensor | None = self.class_weight_tensor if self.loss_weights else None  # type: ignore[assignment]
        if self.task == "regression":
            return functional.mse_loss(logits.float().squeeze(-1), labels.float())
        if self.task == "multi_label":
            return functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weights)
        return functional.cross_entropy(logits.float(), labels, weight=weights)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self.loss_and_logits(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], metrics: torchmetrics.MetricCollection, stage: str) -> None:
        batch_loss, logits, labels = self.loss_and_logits(batch, by_document=True)  # chunked: one row per document
        size = logits.shape[0]
        loss = self.val_loss if stage == "val" else self.test_loss
        loss.update(batch_loss.detach(), weight=size)
        self.log(f"{stage}_loss", loss, prog_bar=stage == "val", batch_size=size)
        metrics.update(*self._metric_inputs(logits, labels))
        self.log_dict(metrics, batch_size=size)
        if stage == "val" and self.val_scores is not None:
            self.val_scores.update(torch.sigmoid(logits.detach().float()), labels)

    def _metric_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.task == "regression":
            return logits.squeeze(-1), labels
        if self.task == "multi_label":
            return torch.sigmoid(logits), labels.long()
        return logits, labels

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        if self.val_scores is None:
            return
        picked = self.val_scores.compute()
        self.val_scores.reset()
        if self._trainer is not None and self.trainer.sanity_checking:
            return
        self.thresholds = {name: t for name, (t, _) in zip(self.labels or [], picked, strict=True)}
        # In the config, so that the checkpoint of this validation and an export carry them to predict and serve.
        setattr(self.model.config, THRESHOLDS_KEY, dict(self.thresholds))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"index": batch["index"], "logits": self(batch).logits}

    # -- optimisation --------------------------------------------------------------------------------------------

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        no_decay = no_decay_parameter_ids(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if id(p) not in no_decay], "weight_decay": self.hparams["weight_decay"]},
            {"params": [p for p in trainable if id(p) in no_decay], "weight_decay": 0.0},
        ]
        # The fused kernel: one pass over all parameters, several times faster per step than the default on CPU;
        # HF Trainer uses it too. Devices without one fall back to the default.
        try:
            optimizer = torch.optim.AdamW(groups, lr=self.hparams["learning_rate"], fused=True)
        except (RuntimeError, TypeError):
            optimizer = torch.optim.AdamW(groups, lr=self.hparams["learning_rate"])
        if self._carried_state:
            self._carry_state_into(optimizer)
        total = float(self.trainer.estimated_stepping_batches)
        warmup = self.hparams["warmup_steps"]
        if warmup is None:
            warmup = int(self.hparams["warmup_ratio"] * total) if math.isfinite(total) else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``--trainer.gradient_clip_val`` (by ``norm`` or ``value``) in every precision, the fused AdamW included.

        Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales a GradScaler's gradients
        inside its own step (the fused AdamW): it could only clip them scaled. Here they are unscaled first where
        there is a scaler (16-mixed; the scaler then steps the optimizer with them as they are), and clipped as
        Lightning clips (all the optimizer's parameters); bf16-mixed has no scaler, its gradients are the true ones.
        Everything else is Lightning's own clipping."""
        precision = self.trainer.precision_plugin
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)  # what Lightning's refusal checks
        if not gradient_clip_val or not fused or not isinstance(precision, MixedPrecision):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if all(p.grad is None for group in optimizer.param_groups for p in group["params"]):
            return  # no backward ran: nothing to unscale or clip (and the scaler will not step)
        if precision.scaler is not None:
            precision.scaler.unscale_(optimizer)
        if GradClipAlgorithmType(gradient_clip_algorithm or "norm") == GradClipAlgorithmType.VALUE:
            precision.clip_grad_by_value(optimizer, gradient_clip_val)
        else:
            precision.clip_grad_by_norm(optimizer, gradient_clip_val)

    def _carry_state_into(self, optimizer: torch.optim.Optimizer) -> None:
        """Put the recipe's AdamW moments and step counts (``carry_optimizer``) into ``optimizer``, by name."""
        assert self._carried_state is not None
        for name, parameter in self.model.named_parameters():
            state = self._carried_state.get(name)
            if state is not None:
                optimizer.state[parameter] = {
                    "step": torch.tensor(state["step"], dtype=torch.float32, device=parameter.device),
                    "exp_avg": state["exp_avg"].to(parameter.device, parameter.dtype, copy=True),
                    "exp_avg_sq": state["exp_avg_sq"].to(parameter.device, parameter.dtype, copy=True),
                }
        self._carried_state = None  # carried once; a resume restores the optimizer from the checkpoint

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._tokenizer_files is None:  # serialised once per run, not at every save
            self._tokenizer_files = tokenizer_files(self.tokenizer)
        assert self.task is not None
        self.model.config.architectures = [type(self.model).__name__]  # what save_pretrained would record
        rng = capture_rng_state()
        rng_by_rank = None
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            # Each process draws its own dropout masks: each one's generators are saved, for an exact resume.
            rng_by_rank = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(rng_by_rank, rng)
        checkpoint["lightbert"] = build_section(
            hf_config=self.model.config,
            tokenizer_files=self._tokenizer_files,
            task=self.task,
            labels=self.labels,
            data_settings=self.data_settings,
            training_config=self.training_config,
            rng=rng,
            rng_by_rank=rng_by_rank,
            metrics=self._validation_metrics(),
            class_weights=self.loss_weights,
            data_files=self.data_files,
        )

    def _validation_metrics(self) -> dict[str, float]:
        """The latest validation metrics, for model cards and ``lightbert inspect``."""
        if self._trainer is None:
            return {}
        metrics = {}
        for name, value in self.trainer.callback_metrics.items():
            if name.startswith("val_"):
                number = float(value)
                if math.isfinite(number):
                    metrics[name] = number
        return metrics

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before Lightning loads the weights: a lightbert checkpoint's labels must be the data's, and the model is
        built from its section when there is none yet (``load_from_checkpoint``) or it has another architecture
        (a Trainer restoring a checkpoint into a model set up from another base)."""
        section = checkpoint.get("lightbert")
        if not isinstance(section, dict):
            raise LightbertError(
                "the checkpoint is not a lightbert checkpoint, so Lightning cannot restore it into this model",
                "start from it with SequenceClassifier(base=PATH) (and carry_optimizer=True for a recipe checkpoint)",
            )
        self._check_labels(section, "the checkpoint")
        if self.model is None or not self._matches(checkpoint["state_dict"]):
            self.build_from_checkpoint(section)
        by_rank = section.get("rng_by_rank")
        if by_rank and self._trainer is not None and len(by_rank) == self.trainer.world_size:
            self._rng_to_restore = by_rank[self.trainer.global_rank]
        else:
            self._rng_to_restore = section.get("rng")

    def _matches(self, state_dict: dict[str, Any]) -> bool:
        """Whether the checkpoint's weights have this model's names and shapes."""
        own = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
        return all(own.get(k) == shape for k, shape in theirs.items()) and set(own) <= set(theirs) | {
            k for k in own if k.endswith(("position_ids", "token_type_ids"))
        }


def not_resumable(path: str | Path, kind: str, stage: str = "fit") -> LightbertError:
    """The error for ``--ckpt_path`` given a model lightbert did not write: what it is, and how to use it."""
    if kind == "recipe":
        start = f"lightbert fit --model.base {path} [--model.recipe_base DIR] [--model.carry_optimizer true]"
    else:
        start = f"lightbert fit --model.base {path}"
    if stage == "fit":
        return LightbertError(
            f"{path} is a {KIND_NAMES[kind]}, which lightbert cannot resume", f"start from it: {start}"
        )
    base = " --base DIR" if kind == "recipe" else ""
    return LightbertError(
        f"{path} is a {KIND_NAMES[kind]}; lightbert {stage} --ckpt_path takes lightbert checkpoints",
        f"predict with it: lightbert predict {path}{base} ..., or fine-tune it: {start}",
    )

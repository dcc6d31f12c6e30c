"""Gradient clipping (``--trainer.gradient_clip_val``, by norm and by value) in every precision, with the fused AdamW
lightbert trains with and with the plain one: the gradients each optimizer step applies are within the limit, and
at it (clipped to the limit, not below it: gradients clipped while still scaled by a GradScaler would be far below)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import fit_args, quiet_trainer, run_cli
from lightning.pytorch.plugins.precision import MixedPrecision

from lightbert import ClassificationDataModule, SequenceClassifier

LIMIT = 1e-3  # far below the tiny model's gradients (norm ~0.03, largest ~0.005): every step is clipped


class AppliedGradients(pl.Callback):
    """The gradients of each optimizer step as it applied them: read right after the step, before the next
    backward (the fused AdamW unscales a GradScaler's gradients in place inside its step, so these are the ones
    it applied in every case). Steps that a GradScaler skipped for non-finite gradients are left out."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float, torch.dtype]] = []  # (norm, largest |g|, dtype)
        self.fused: set[bool] = set()

    def on_train_start(self, trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(self.record)
            self.fused.add(bool(optimizer.defaults.get("fused")))

    def record(self, optimizer, args, kwargs) -> None:
        found_inf = getattr(optimizer, "found_inf", None)  # set by a GradScaler for the fused step
        if found_inf is not None and found_inf.item() > 0:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))
        largest = max(g.abs().max().item() for g in grads)
        self.steps.append((norm.item(), largest, grads[0].dtype))


class PlainAdamW(torch.optim.AdamW):
    """AdamW without the fused kernel, as on a device that has none (lightbert falls back to it there)."""

    def __init__(self, *args, fused=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)


def fp16_with_a_grad_scaler() -> dict:
    """16-mixed as on a GPU: fp16 autocast and a GradScaler (on the CPU, Lightning's 16-mixed is bf16-mixed)."""
    return {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))]}


PRECISIONS = {
    "32-true": lambda: {"precision": "32-true"},
    "bf16-mixed": lambda: {"precision": "bf16-mixed"},
    "16-mixed": fp16_with_a_grad_scaler,
    "bf16-true": lambda: {"precision": "bf16-true"},
    "16-true": lambda: {"precision": "16-true"},
    "64-true": lambda: {"precision": "64-true"},
}
# Plain AdamW in fp16 weights turns them NaN after its first step (its epsilon underflows in fp16): not clipping's
# doing, and lightbert steps with the fused kernel, which computes in fp32.
CASES = [
    pytest.param(precision, optimizer, id=f"{precision}-{optimizer}")
    for precision in PRECISIONS
    for optimizer in ("fused", "plain")
    if (precision, optimizer) != ("16-true", "plain")
]


def clipped_steps(base, files, precision, optimizer, algorithm, monkeypatch) -> AppliedGradients:
    """Three optimizer steps of lightbert's model clipped at LIMIT; the gradients each step applied."""
    if optimizer == "plain":
        monkeypatch.setattr(torch.optim, "AdamW", PlainAdamW)
    pl.seed_everything(0, verbose=False)
    train, val = files
    data = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(base), batch_size=8)
    applied = AppliedGradients()
    trainer = quiet_trainer(
        max_steps=3,
        limit_val_batches=0,
        gradient_clip_val=LIMIT,
        gradient_clip_algorithm=algorithm,
        callbacks=[applied],
        **PRECISIONS[precision](),
    )
    trainer.fit(SequenceClassifier(base=str(base), learning_rate=1e-3), data)
    assert applied.fused == {optimizer == "fused"}
    assert len(applied.steps) >= 2, "the GradScaler skipped the steps: nothing was applied"
    return applied


def tolerance(dtype: torch.dtype) -> float:
    """How far a clipped value can round off the limit in the gradients' dtype."""
    return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6


@pytest.mark.parametrize(("precision", "optimizer"), CASES)
def test_clipping_by_norm_steps_with_gradients_of_the_limits_norm(
    tiny_bert, sentiment_files, precision, optimizer, monkeypatch
):
    applied = clipped_steps(tiny_bert, sentiment_files, precision, optimizer, "norm", monkeypatch)
    for norm, _, dtype in applied.steps:
        assert LIMIT * 0.99 <= norm <= LIMIT * (1 + tolerance(dtype)), (norm, applied.steps)


@pytest.mark.parametrize(("precision", "optimizer"), CASES)
def test_clipping_by_value_steps_with_no_gradient_beyond_the_limit(
    tiny_bert, sentiment_files, precision, optimizer, monkeypatch
):
    applied = clipped_steps(tiny_bert, sentiment_files, precision, optimizer, "value", monkeypatch)
    for _, largest, dtype in applied.steps:
        assert LIMIT * 0.99 <= largest <= LIMIT * (1 + tolerance(dtype)), (largest, applied.steps)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_fit_clips_gradients_in_bf16_mixed_with_the_fused_optimizer(tiny_bert, sentiment_files, tmp_path, algorithm):
    # Lightning's mixed-precision plugin refused: "The current optimizer, AdamW, does not allow for gradient clipping"
    args = fit_args(tiny_bert, *sentiment_files, tmp_path / "runs", "--trainer.precision=bf16-mixed")
    result = run_cli(*args, "--trainer.gradient_clip_val=1.0", f"--trainer.gradient_clip_algorithm={algorithm}")
    assert result.code == 0, result.err
    assert (tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt").is_file()

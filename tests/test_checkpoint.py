"""Checkpoints are self-contained (config, labels, tokenizer, data settings, training config) and safe (only what
torch.load(weights_only=True) accepts)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import fit_args, make_base_model, run_cli, sentiment_rows, write_csv, write_jsonl

from lightbert import load
from lightbert.checkpoint import check_weights_only_safe, read_checkpoint
from lightbert.errors import LightbertError


def fit(base: Path, train: Path, val: Path, root: Path, *extra: str) -> Path:
    """`lightbert fit` in-process, 2 epochs of batch 8; returns the run directory."""
    result = run_cli(*fit_args(base, train, val, root, *extra, epochs=2))
    assert result.code == 0, result.err
    return sorted(root.glob("version_*"))[-1]


def test_every_checkpoint_written_loads_with_weights_only(trained_run):
    checkpoints = sorted((trained_run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in {p.name for p in checkpoints} and any(p.name.startswith("best-") for p in checkpoints)
    for path in checkpoints:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "lightbert"} <= set(checkpoint)


@pytest.mark.parametrize("task", ["multi_label", "regression"])
def test_checkpoints_of_other_tasks_load_with_weights_only(task, tmp_path, tiny_distilbert):
    rows = sentiment_rows(16)
    if task == "multi_label":
        records = [{"text": text, "label": ["a", "b"] if label == "1" else ["b"]} for text, label in rows]
        path = write_jsonl(tmp_path / "d.jsonl", records)
    else:
        path = write_csv(tmp_path / "d.csv", ["text", "score"], [(text, f"{int(label) + 0.5}") for text, label in rows])
    run = fit(tiny_distilbert, path, path, tmp_path / "runs")
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        assert torch.load(ckpt, weights_only=True)["lightbert"]["task"] == task


def test_checkpoint_carries_config_labels_tokenizer_and_settings(trained_checkpoint):
    section = read_checkpoint(trained_checkpoint)["lightbert"]
    assert section["hf_config"]["id2label"] == {"0": "negative", "1": "positive"}
    assert section["hf_config"]["problem_type"] == "single_label_classification"
    assert section["labels"] == ["negative", "positive"] and section["task"] == "single_label"
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(section["tokenizer_files"])
    assert section["data"]["max_length"] == 64 and section["data"]["text_column"] is None
    assert section["data"]["paired"] is False
    assert "max_epochs: 2" in section["training_config"] and "batch_size: 8" in section["training_config"]
    assert set(section["versions"]) == {"lightbert", "torch", "transformers", "lightning"}
    assert set(section["rng"]) >= {"python", "numpy", "torch"}


def test_checkpoint_loads_in_a_fresh_process_without_the_base_model_or_network(tmp_path, sentiment_files):
    base = make_base_model(tmp_path / "base-to-delete", "bert")
    ckpt = fit(base, *sentiment_files, tmp_path / "runs") / "checkpoints" / "last.ckpt"
    torch.save(load(ckpt).logits(["a good film", "bad"]), tmp_path / "expected.pt")
    shutil.rmtree(base)
    script = textwrap.dedent(f"""
        import socket, torch
        def no_network(*args, **kwargs):
            raise OSError("network disabled in this test")
        socket.socket.connect = no_network
        socket.create_connection = no_network
        import lightbert
        classifier = lightbert.load({str(ckpt)!r})
        logits = classifier.logits(["a good film", "bad"])
        assert torch.equal(logits, torch.load({str(tmp_path / "expected.pt")!r})), logits
        assert classifier.labels == ["0", "1"] and classifier.info.kind == "lightbert"
        print("ok")
    """)
    env = {"HF_HUB_OFFLINE": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_the_safety_check_refuses_objects_that_weights_only_loading_refuses():
    check_weights_only_safe({"a": [1, 2.0, "x", None, True, torch.zeros(2)]})
    with pytest.raises(TypeError, match="pathlib"):
        check_weights_only_safe({"path": Path("/tmp")})
    with pytest.raises(TypeError, match="TorchVersion"):
        check_weights_only_safe({"v": torch.__version__})


def test_reading_a_non_checkpoint_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(LightbertError, match=r"notes\.ckpt is not a checkpoint file"):
        read_checkpoint(text)
    with pytest.raises(LightbertError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(LightbertError, match="not URLs"):
        read_checkpoint("https://example.com/model.ckpt")


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(LightbertError, match="could run code"):
        read_checkpoint(path)
    assert not sentinel.exists()


def test_last_ckpt_is_the_final_state_even_when_no_best_checkpoint_was_saved_at_the_end(
    tiny_bert, sentiment_files, tmp_path
):
    # Lightning 2.6 refreshes last.ckpt only when it saves a top-k checkpoint; resuming must start from the end.
    import lightning.pytorch as pl
    from helpers import quiet_trainer

    from lightbert import ClassificationDataModule, SequenceClassifier
    from lightbert.callbacks import Checkpointing

    pl.seed_everything(0, verbose=False)
    train, val = sentiment_files
    data = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert), batch_size=8)
    checkpoint = Checkpointing(dirpath=str(tmp_path), monitor="val_loss", mode="min", save_top_k=1, save_last=True)
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(SequenceClassifier(base=str(tiny_bert), learning_rate=1e-12), data)  # val_loss will not improve
    assert len(list(tmp_path.glob("epoch=0-*.ckpt"))) == 1 and not list(tmp_path.glob("epoch=1-*.ckpt"))
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == trainer.global_step == 10

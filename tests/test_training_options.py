"""What the peers' users ask for, as first-class options: class weights for imbalanced labels, early stopping, and
multi-label thresholds picked on the validation data. Each survives checkpoints, resume and export."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, fit_args, read_jsonl, run_cli, sentiment_rows, write_csv
from sklearn.utils.class_weight import compute_class_weight

from lightbert import load
from lightbert.evaluation import evaluate_file
from lightbert.labels import class_weights

LABELS = ["negative", "neutral", "positive"]


# -- class weights ---------------------------------------------------------------------------------------------------


def test_balanced_class_weights_are_scikit_learns():
    targets = torch.tensor([0] * 30 + [1] * 5 + [2] * 15)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=targets.numpy())
    assert class_weights("balanced", "single_label", LABELS, targets) == pytest.approx(expected.tolist(), rel=1e-12)


def test_balanced_multi_label_weights_are_each_labels_negatives_over_positives():
    targets = torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=torch.float32)
    assert class_weights("balanced", "multi_label", ["a", "b"], targets) == pytest.approx([1 / 3, 3.0])


def test_a_mapping_weighs_the_labels_it_names_and_leaves_the_others_at_one():
    assert class_weights({"neutral": 4.0}, "single_label", LABELS, None) == [1.0, 4.0, 1.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([1.0, 2.0], "2 class weights for 3 labels"),
        ([1.0, -2.0, 1.0], "not a positive number"),
        ({"happy": 2.0}, "unknown label(s) 1 label: happy"),
        ("balanced", "neutral has none"),
    ],
)
def test_class_weights_that_do_not_fit_the_labels_are_refused(spec, message):
    from lightbert.errors import LightbertError

    with pytest.raises(LightbertError, match=message.replace("(", r"\(").replace(")", r"\)")):
        class_weights(spec, "single_label", LABELS, torch.tensor([0, 2, 2]))


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imbalanced")
    rows = [(text, "positive" if label == "1" else "negative") for text, label in sentiment_rows(40, seed=3)]
    rows = [r for r in rows if r[1] == "negative"] + [r for r in rows if r[1] == "positive"][:4]
    return (
        tmp,
        write_csv(tmp / "train.csv", ["text", "label"], rows),
        write_csv(tmp / "val.csv", ["text", "label"], rows[:8] + rows[-4:]),
    )


def test_fit_prints_the_weights_and_stores_them_in_the_checkpoint_and_the_model_card(tiny_bert, imbalanced, tmp_path):
    _, train, val = imbalanced
    result = run_cli(*fit_args(tiny_bert, train, val, tmp_path / "runs", "--model.class_weights=balanced"))
    assert result.code == 0, result.err
    negatives = sum(1 for line in train.read_text().splitlines()[1:] if line.endswith("negative"))
    total = len(train.read_text().splitlines()) - 1
    expected = [total / (2 * negatives), total / (2 * (total - negatives))]
    assert f"class weights: negative {expected[0]:.4g}, positive {expected[1]:.4g}" in result.out
    checkpoint = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    section = torch.load(checkpoint, weights_only=True)["lightbert"]
    assert section["class_weights"] == pytest.approx(expected)
    assert run_cli("export", checkpoint, tmp_path / "exported").code == 0
    assert f"class weights: negative {expected[0]:.4g}" in (tmp_path / "exported" / "README.md").read_text()


def test_the_weighted_loss_is_torchs_weighted_cross_entropy(tiny_bert, imbalanced):
    from lightbert import ClassificationDataModule, SequenceClassifier

    _, train, val = imbalanced
    data = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_bert), batch_size=8)
    data.setup("fit")
    module = SequenceClassifier(base=str(tiny_bert), class_weights=[1.0, 5.0])
    module.take_labels_from(data)
    module.configure_classifier()
    module.model.eval()
    batch = next(iter(data.val_dataloader()))
    loss, logits, _ = module.loss_and_logits(batch)
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=torch.tensor([1.0, 5.0]))
    unweighted = torch.nn.functional.cross_entropy(logits, batch["labels"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and abs(loss.item() - unweighted.item()) > 1e-4


def test_resuming_with_other_class_weights_is_refused_in_one_line(tiny_bert, imbalanced, tmp_path):
    _, train, val = imbalanced
    assert run_cli(*fit_args(tiny_bert, train, val, tmp_path / "runs", "--model.class_weights=balanced")).code == 0
    checkpoint = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    args = fit_args(tiny_bert, train, val, tmp_path / "more", f"--ckpt_path={checkpoint}", epochs=2)
    result = run_cli(*args, "--model.class_weights=[1.0, 9.0]")
    assert result.code == 2 and "resume with the checkpoint's class weights" in result.err
    assert not (tmp_path / "more").exists()


def test_a_resumed_run_keeps_the_checkpoints_class_weights(tiny_bert, imbalanced, tmp_path):
    _, train, val = imbalanced
    assert run_cli(*fit_args(tiny_bert, train, val, tmp_path / "runs", "--model.class_weights=[1.0, 3.0]")).code == 0
    checkpoint = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = run_cli(*fit_args(tiny_bert, train, val, tmp_path / "more", f"--ckpt_path={checkpoint}", epochs=2))
    assert resumed.code == 0, resumed.err
    # the resumed run continues its own run directory
    section = torch.load(checkpoint, weights_only=True)["lightbert"]
    assert section["class_weights"] == [1.0, 3.0]


# -- early stopping --------------------------------------------------------------------------------------------------

NEVER_IMPROVES = ["--early_stopping.patience=1", "--early_stopping.min_delta=100"]  # only the first validation counts


def test_early_stopping_stops_says_why_and_names_the_best_checkpoint(tiny_bert, sentiment_files, tmp_path):
    train, val = sentiment_files
    result = run_cli(*fit_args(tiny_bert, train, val, tmp_path / "runs", *NEVER_IMPROVES, epochs=6))
    assert result.code == 0, result.err
    assert "stopped early after epoch 1: val_loss has not improved" in result.out
    assert "(--early_stopping.patience 1)" in result.out
    assert re.search(r"\nbest: epoch (0, step 5|1, step 10), val_loss [\d.]+, .* → .*best\.ckpt", result.out)
    last = torch.load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 10  # 40 rows of batch 8: 5 steps an epoch, 2 epochs


def test_without_patience_nothing_stops_early(tiny_bert, sentiment_files, tmp_path):
    train, val = sentiment_files
    result = run_cli(*fit_args(tiny_bert, train, val, tmp_path / "runs", "--early_stopping.min_delta=100", epochs=3))
    assert result.code == 0 and "stopped early" not in result.out
    last = torch.load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 15


def test_a_run_stopped_after_its_first_epoch_and_resumed_stops_where_the_uninterrupted_one_does(
    tiny_bert, sentiment_files, tmp_path
):
    train, val = sentiment_files
    first = run_cli(*fit_args(tiny_bert, train, val, tmp_path / "a", *NEVER_IMPROVES, epochs=1))
    assert first.code == 0
    checkpoint = tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        *fit_args(tiny_bert, train, val, tmp_path / "b", *NEVER_IMPROVES, f"--ckpt_path={checkpoint}", epochs=6)
    )
    assert resumed.code == 0, resumed.err
    # Without the stopper's state (its best score) the resumed run would count epoch 1 as an improvement.
    assert "stopped early after epoch 1" in resumed.out
    assert (
        torch.load(checkpoint, weights_only=True)["global_step"] == 10  # its own run directory, continued
    )


# -- multi-label thresholds ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topics(tmp_path_factory, tiny_bert):
    """A multi-label set from real AG News rows (its topic, and `Long` for texts over 35 words), and a tiny model
    fitted on it with --model.tune_thresholds."""
    source = SHARED_DATA / "agnews" / "train.tsv"
    if not source.is_file():
        pytest.skip("../shared/data is not present")
    tmp = tmp_path_factory.mktemp("topics")
    rows = []
    for line in source.read_text(encoding="utf-8").splitlines()[:160]:
        text, topic = line.rsplit("\t", 1)
        rows.append((text, topic + (";Long" if len(text.split()) > 35 else "")))
    train = write_csv(tmp / "train.tsv", ["text", "labels"], rows[:120])
    val = write_csv(tmp / "val.tsv", ["text", "labels"], rows[120:])
    args = fit_args(
        tiny_bert, train, val, tmp / "runs", "--data.label_delimiter=;", "--model.tune_thresholds", epochs=2
    )
    result = run_cli(*args, "--model.learning_rate=0.003")
    assert result.code == 0, result.err
    return tmp, result, tmp / "runs" / "version_0" / "checkpoints" / "last.ckpt", val


def test_fit_picks_each_labels_f1_best_threshold_on_the_validation_data(topics):
    _, result, checkpoint, val = topics
    classifier = load(checkpoint)
    assert classifier.thresholds is not None and set(classifier.thresholds) == set(classifier.labels)
    assert "thresholds picked on the validation data" in result.out
    # The thresholds are the ones lightbert evaluate finds best on the same rows with the same weights.
    report = evaluate_file(classifier, val, "text", None, "labels", ";")
    best = report.details["best_thresholds"]
    for name, threshold in classifier.thresholds.items():
        assert threshold == pytest.approx(best[name]["threshold"], abs=1.01e-3), name


def test_the_picked_threshold_of_each_label_has_the_best_f1_of_every_threshold_in_steps_of_a_thousandth():
    from lightbert.model import ScoreHistograms

    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(400, 3, generator=generator) < torch.tensor([0.1, 0.4, 0.7])
    probs = (truth.float() * 0.3 + torch.rand(400, 3, generator=generator) * 0.7).clamp(0, 1)  # informative, noisy
    histograms = ScoreHistograms(3)
    histograms.update(probs, truth.float())
    picked = histograms.compute()
    for label, (threshold, f1) in enumerate(picked):
        predicted = probs[:, label].unsqueeze(0) >= torch.arange(1001).unsqueeze(1) / 1000  # [threshold, row]
        positive = truth[:, label]
        tp = (predicted & positive).sum(1)
        scores = (2 * tp / (predicted.sum(1) + positive.sum())).tolist()  # F1 at each threshold
        assert f1 == pytest.approx(max(scores), abs=1e-6)
        assert threshold == pytest.approx(scores.index(max(scores)) / 1000)  # the lowest of the best


def test_predict_applies_the_models_thresholds_unless_threshold_is_given(topics):
    _tmp, _, checkpoint, val = topics
    texts = [line.split("\t")[0] for line in val.read_text().splitlines()[1:9]]
    classifier = load(checkpoint)
    for record in classifier.predict(texts):
        expected = [name for name, p in record["probs"].items() if p >= classifier.thresholds[name]]
        assert record["labels"] == expected
    records = read_jsonl(run_cli("predict", checkpoint, *texts, "--threshold=0.5").out)
    for record in records:
        assert record["labels"] == [name for name, p in record["probs"].items() if p >= 0.5]


def test_export_writes_the_thresholds_into_the_config_and_loads_them_back(topics):
    tmp, _, checkpoint, _ = topics
    assert run_cli("export", checkpoint, tmp / "exported").code == 0
    config = json.loads((tmp / "exported" / "config.json").read_text())
    assert config["label_thresholds"] == load(checkpoint).thresholds
    assert load(tmp / "exported").thresholds == load(checkpoint).thresholds


def test_a_config_with_thresholds_outside_0_to_1_is_refused_in_one_line(topics, tmp_path):
    _tmp, _, checkpoint, _ = topics
    assert run_cli("export", checkpoint, tmp_path / "bad").code == 0
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    config["label_thresholds"] = {name: 1.5 for name in config["label_thresholds"]}
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    result = run_cli("predict", tmp_path / "bad", "a text")
    assert result.code == 2 and "label_thresholds" in result.err and len(result.err_lines) == 1

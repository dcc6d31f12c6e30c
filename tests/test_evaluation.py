"""`lightbert evaluate`: every number equals scikit-learn's (and torchmetrics') on the same predictions, for the three
tasks, on real rows and tiny models; the report's files are whole and readable; the command's refusals."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import torchmetrics
from helpers import assert_one_error_line, run_cli, sentiment_rows, shared_sample, train_checkpoint, write_csv
from scipy import stats
from sklearn import metrics as sk
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lightbert import evaluate, load
from lightbert.errors import LightbertError
from lightbert.evaluation import evaluate_file, write_report

ABC = ["a", "b", "c"]


@pytest.fixture(scope="module")
def never_c(tmp_path_factory, tiny_bert):
    """A three-class model that never predicts class c (its bias is very low)."""
    directory = tmp_path_factory.mktemp("abc") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=3, id2label=dict(enumerate(ABC)), label2id={n: i for i, n in enumerate(ABC)}
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    with torch.no_grad():
        model.classifier.weight.mul_(100)  # the random head, spread out
        logits = model.eval()(
            **tokenizer([t for t, _ in sentiment_rows(200)], padding=True, return_tensors="pt")
        ).logits
        gap = float((logits[:, 0] - logits[:, 1]).median())  # a bias that splits texts between a and b
        model.classifier.bias.copy_(torch.tensor([-gap / 2, gap / 2, -1000.0]) + model.classifier.bias * 0)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return load(directory)


def sklearn_report(y_true, y_pred, k):
    return sk.classification_report(y_true, y_pred, labels=list(range(k)), output_dict=True, zero_division=0)


def test_single_label_numbers_are_scikit_learns_with_an_absent_label_and_an_unpredicted_class(never_c):
    texts = [text for text, _ in sentiment_rows(60, seed=7)]
    gold = [["a", "b"][i % 2] for i in range(60)]  # class c never occurs
    report = evaluate(never_c, texts, gold, top_errors=5)
    probs = torch.softmax(never_c.logits(texts), dim=-1).double().numpy()
    y_true, y_pred = np.array([ABC.index(g) for g in gold]), probs.argmax(1)
    assert 2 not in set(y_pred) and len(set(y_pred)) == 2  # the report covers both cases, and is not trivial
    expected = sklearn_report(y_true, y_pred, 3)
    for i, name in enumerate(ABC):
        for key, theirs in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "f1-score"),
            ("support", "support"),
        ):
            assert report.details["per_class"][name][key] == pytest.approx(expected[str(i)][theirs], abs=1e-12), name
    for ours, theirs in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for key, their_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert report.details[ours][key] == pytest.approx(expected[theirs][their_key], abs=1e-12)
    assert report.metrics["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred), abs=1e-12)
    assert report.metrics["f1_macro"] == pytest.approx(expected["macro avg"]["f1-score"], abs=1e-12)
    assert report.metrics["log_loss"] == pytest.approx(sk.log_loss(y_true, probs, labels=[0, 1, 2]), abs=1e-6)
    assert (
        report.details["confusion_matrix"]["counts"] == sk.confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()
    )
    ece = torchmetrics.functional.classification.multiclass_calibration_error(
        torch.tensor(probs), torch.tensor(y_true), num_classes=3, n_bins=15, norm="l1"
    )
    assert report.metrics["ece"] == pytest.approx(float(ece), abs=1e-6)
    bins = report.details["calibration"]["reliability"]
    assert sum(b["count"] for b in bins) == 60 and len(bins) == 15


def test_the_worst_errors_are_the_most_confident_wrong_predictions(never_c):
    texts = [text for text, _ in sentiment_rows(40, seed=8)]
    gold = ["b" if i % 3 else "a" for i in range(40)]
    report = evaluate(never_c, texts, gold, top_errors=4)
    records = never_c.predict(texts)
    wrong = [(r["score"], t, g, r["label"]) for t, g, r in zip(texts, gold, records, strict=True) if r["label"] != g]
    wrong = sorted(wrong, key=lambda w: -w[0])[:4]  # the most confident first; earlier rows first among equals
    assert [(e["probability"], e["text"], e["gold"], e["predicted"]) for e in report.details["worst_errors"]] == wrong


def test_single_label_on_real_sst2_rows_with_ids_for_labels(classifier, shared_data, tmp_path):
    # SST-2 writes its labels as ids 0 and 1; the model's labels are negative and positive.
    path = shared_sample(shared_data / "sst2" / "validation.tsv", tmp_path / "sst2.tsv", 300)
    report = evaluate_file(classifier, path)
    texts = [line.split("\t")[0] for line in path.read_text().splitlines()[1:]]
    y_true = np.array([int(line.split("\t")[1]) for line in path.read_text().splitlines()[1:]])
    y_pred = classifier.logits(texts).argmax(-1).numpy()
    assert report.rows == 300
    assert report.metrics["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred), abs=1e-12)
    assert report.metrics["f1_macro"] == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"), abs=1e-12)


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("multi")
    rows = [(t, "x,y" if y == "1" else "y") for t, y in sentiment_rows(32)] + [(t, "") for t, _ in sentiment_rows(4)]
    path = write_csv(tmp / "m.csv", ["text", "labels"], rows)
    return load(train_checkpoint(tiny_bert, tmp, path, label_delimiter=",")), rows


def test_multi_label_numbers_are_scikit_learns(multi_label):
    model, rows = multi_label
    texts = [t for t, _ in rows]
    gold = [labels for _, labels in rows]
    report = evaluate(model, texts, gold, threshold=0.5, label_delimiter=",")
    probs = torch.sigmoid(model.logits(texts)).double().numpy()
    truth = np.array([[name in labels.split(",") for name in model.labels] for labels in gold], dtype=int)
    predicted = (probs >= 0.5).astype(int)
    expected = sk.classification_report(truth, predicted, output_dict=True, zero_division=0)
    for i, name in enumerate(model.labels):
        assert report.details["per_label"][name]["f1"] == pytest.approx(expected[str(i)]["f1-score"], abs=1e-12)
        assert report.details["per_label"][name]["support"] == expected[str(i)]["support"]
    assert report.metrics["f1_micro"] == pytest.approx(expected["micro avg"]["f1-score"], abs=1e-12)
    assert report.metrics["f1_macro"] == pytest.approx(expected["macro avg"]["f1-score"], abs=1e-12)
    assert report.metrics["subset_accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted), abs=1e-12)
    for i, name in enumerate(model.labels):  # the best threshold, against trying every one
        scores = [sk.f1_score(truth[:, i], (probs[:, i] >= t / 1000).astype(int), zero_division=0) for t in range(1001)]
        best = report.details["best_thresholds"][name]
        assert best["f1"] == pytest.approx(max(scores), abs=1e-12)
        assert scores[round(best["threshold"] * 1000)] == pytest.approx(max(scores), abs=1e-12)


def test_regression_numbers_are_scikit_learns_scipys_and_torchmetrics(tmp_path, tiny_bert):
    rows = [(t, f"{int(y) * 2 + i % 3 * 0.25:.2f}") for i, (t, y) in enumerate(sentiment_rows(40))]
    path = write_csv(tmp_path / "r.csv", ["text", "score"], rows)
    model = load(train_checkpoint(tiny_bert, tmp_path, path))
    report = evaluate_file(model, path, top_errors=3)
    predicted = model.logits([t for t, _ in rows])[:, 0].double().numpy()
    gold = np.array([float(y) for _, y in rows])
    assert report.metrics["mse"] == pytest.approx(sk.mean_squared_error(gold, predicted), abs=1e-9)
    assert report.metrics["mae"] == pytest.approx(sk.mean_absolute_error(gold, predicted), abs=1e-9)
    assert report.metrics["pearson"] == pytest.approx(stats.pearsonr(predicted, gold)[0], abs=1e-9)
    assert report.metrics["spearman"] == pytest.approx(stats.spearmanr(predicted, gold)[0], abs=1e-9)
    spearman = torchmetrics.functional.spearman_corrcoef(torch.tensor(predicted), torch.tensor(gold))
    assert report.metrics["spearman"] == pytest.approx(float(spearman), abs=1e-6)
    errors = np.abs(predicted - gold)
    assert [e["error"] for e in report.details["worst_errors"]] == pytest.approx(sorted(errors)[::-1][:3])


# -- the report's files ------------------------------------------------------------------------------------------------


def picture(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    return image.shape, float(image[..., :3].std())


@pytest.mark.parametrize("task", ["single_label", "regression"])
def test_the_report_is_json_markdown_and_figures_that_are_not_blank(task, never_c, tmp_path, tiny_bert):
    if task == "single_label":
        model, texts, gold = never_c, [t for t, _ in sentiment_rows(30)], ["a", "b", "c"] * 10
    else:
        rows = [(t, f"{int(y) + 0.5}") for t, y in sentiment_rows(16)]
        model = load(train_checkpoint(tiny_bert, tmp_path, write_csv(tmp_path / "r.csv", ["text", "score"], rows)))
        texts, gold = [t for t, _ in rows], [y for _, y in rows]
    write_report(evaluate(model, texts, gold), tmp_path / "report")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["task"] == task and data["rows"] == len(texts) and data["figures"]
    page = (tmp_path / "report" / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert sorted(links) == sorted(data["figures"].values())
    for link in links:
        (height, width, _), spread = picture(tmp_path / "report" / link)
        assert height > 200 and width > 200 and spread > 0.01, link


def test_a_confusion_matrix_of_fifty_labels_stays_readable(tmp_path):
    from lightbert.evaluation import Report
    from lightbert.report_figures import draw

    labels = [f"class {i}" for i in range(50)]
    counts = np.random.default_rng(0).integers(0, 20, size=(50, 50)).tolist()
    details = {"confusion_matrix": {"labels": labels, "counts": counts},
               "calibration": {"ece": 0.1, "bins": 15, "reliability": [{"lower": b / 15, "upper": (b + 1) / 15,
               "count": 1, "confidence": 0.5, "accuracy": 0.5} for b in range(15)]},
               "per_class": {n: {"f1": 0.5} for n in labels}}  # fmt: skip
    draw(Report("single_label", labels, 1, {}, details), tmp_path)
    (_, width, _), spread = picture(tmp_path / "confusion_matrix.png")
    assert width >= 2000 and spread > 0.01  # one readable cell per label pair


# -- the command -------------------------------------------------------------------------------------------------------


def test_the_command_writes_the_report_and_says_where(trained_checkpoint, tmp_path):
    path = write_csv(
        tmp_path / "e.csv", ["text", "label"], [(t, ["negative", "positive"][int(y)]) for t, y in sentiment_rows(20)]
    )
    result = run_cli("evaluate", trained_checkpoint, "--input", path, "--output_dir", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.out.startswith("evaluation: 20 rows, accuracy ")
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"report.json", "report.md", "confusion_matrix.png"}
    again = run_cli("evaluate", trained_checkpoint, "--input", path, "--output_dir", tmp_path / "out")
    assert_one_error_line(again, "output directory is not empty")


def test_labels_the_model_does_not_know_are_named_with_the_models(trained_checkpoint, tmp_path):
    path = write_csv(tmp_path / "e.csv", ["text", "label"], [("good", "positive"), ("meh", "neutral")])
    result = run_cli("evaluate", trained_checkpoint, "--input", path, "--output_dir", tmp_path / "out")
    assert_one_error_line(
        result, "labels the model does not know: 1 label: neutral", "known: 2 labels: negative, positive"
    )
    assert not (tmp_path / "out").exists()


def test_test_and_fit_write_the_report_evaluate_writes(trained_run, trained_checkpoint, tiny_bert, tmp_path):
    data = trained_run.parent.parent
    evaluated = run_cli("evaluate", trained_checkpoint, "--input", data / "val.csv", "--output_dir", tmp_path / "ev")
    tested = run_cli("test", f"--ckpt_path={trained_checkpoint}", f"--data.test={data / 'val.csv'}",
                     f"--evaluation_dir={tmp_path / 'test'}")  # fmt: skip
    assert evaluated.code == tested.code == 0, tested.err
    numbers = [json.loads((tmp_path / d / "report.json").read_text())["metrics"] for d in ("ev", "test")]
    assert numbers[0] == pytest.approx(numbers[1], abs=1e-9)
    fitted = run_cli("fit", f"--model.base={tiny_bert}", f"--data.train={data / 'train.csv'}",
                     f"--data.test={data / 'val.csv'}", "--data.batch_size=8", "--trainer.max_epochs=1",
                     f"--trainer.default_root_dir={tmp_path / 'runs'}", f"--evaluation_dir={tmp_path / 'fit'}",
                     "--trainer.enable_progress_bar=false")  # fmt: skip
    assert fitted.code == 0, fitted.err
    assert "evaluation: 8 rows" in fitted.out and (tmp_path / "fit" / "report.md").is_file()


def test_export_quotes_the_models_report_in_the_model_card(trained_checkpoint, trained_run, tmp_path):
    report = tmp_path / "report"
    assert run_cli("evaluate", trained_checkpoint, "--input", trained_run.parent.parent / "val.csv",
                   "--output_dir", report).code == 0  # fmt: skip
    assert run_cli("export", trained_checkpoint, tmp_path / "model", "--report", report).code == 0
    card = (tmp_path / "model" / "README.md").read_text()
    metrics = json.loads((report / "report.json").read_text())["metrics"]
    assert "model-index:" in card and "type: accuracy" in card and "## Evaluation" in card
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in card


# -- nothing a user had is lost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["data.tsv", "sub/deeper/data.tsv"])
def test_an_output_directory_that_holds_the_input_is_refused_before_any_work(where, tmp_path):
    path = tmp_path / "ev" / where
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, ["sentence", "label"], [("a good film", "positive"), ("bad", "negative")])
    before = path.read_bytes()
    result = run_cli("evaluate", tmp_path / "no-such-model.ckpt", "--input", path, "--output_dir", tmp_path / "ev",
                     "--overwrite")  # fmt: skip
    assert_one_error_line(result, f"--output_dir {tmp_path / 'ev'} holds the input", "choose another --output_dir")
    assert path.read_bytes() == before


def test_an_output_directory_that_holds_the_model_is_refused(trained_checkpoint, tmp_path):
    (tmp_path / "run").mkdir()
    model = shutil.copy(trained_checkpoint, tmp_path / "run" / "model.ckpt")
    path = write_csv(tmp_path / "e.csv", ["text", "label"], [("a good film", "positive"), ("bad", "negative")])
    result = run_cli("evaluate", model, "--input", path, "--output_dir", tmp_path / "run", "--overwrite")
    assert_one_error_line(result, "holds the input", str(model))
    assert (tmp_path / "run" / "model.ckpt").is_file()


def test_write_report_never_replaces_a_directory_that_holds_its_data(classifier, tmp_path):
    (tmp_path / "ev").mkdir()
    path = write_csv(tmp_path / "ev" / "e.csv", ["text", "label"], [("a good film", "positive"), ("bad", "negative")])
    report = evaluate_file(classifier, path)
    with pytest.raises(LightbertError, match="holds the input"):
        write_report(report, tmp_path / "ev", overwrite=True)
    assert path.is_file()


# -- the columns the model was trained on ------------------------------------------------------------------------------


def test_evaluate_reads_a_new_file_with_the_columns_the_model_was_trained_on(pair_model, tmp_path):
    rows = [(str(i), t, "the film", ["negative", "positive"][int(y)]) for i, (t, y) in enumerate(sentiment_rows(12))]
    path = tmp_path / "new.tsv"
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    result = run_cli("evaluate", pair_model, "--input", path, "--output_dir", tmp_path / "auto")
    assert result.code == 0, result.err
    assert "columns of new.tsv: text 1, text_pair 2, label 3, as the model was trained" in result.err
    options = ["--text_column", "1", "--text_pair_column", "2", "--label_column", "3"]
    assert run_cli("evaluate", pair_model, "--input", path, "--output_dir", tmp_path / "given", *options).code == 0
    auto, given = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("auto", "given"))
    assert auto["rows"] == 12 and auto["data"]["text_column"] == 1 and auto["data"]["label_column"] == 3
    assert auto["metrics"] == given["metrics"]

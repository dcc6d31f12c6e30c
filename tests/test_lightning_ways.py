"""Lightning users' own ways in: `SequenceClassifier.load_from_checkpoint`, the Trainer's `ckpt_path`, and
fine-tuning from any model `lightbert.load` takes, including carrying on a recipe run's AdamW state."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    fit_args,
    quiet_trainer,
    run_cli,
    sentiment_rows,
    train_recipe,
    write_csv,
)

from lightbert import ClassificationDataModule, SequenceClassifier, load
from lightbert.errors import LightbertError

TEXTS = ["a good film", "bad plot and a sad story", "", "the actor was superb " * 30]


def labelled(path, names, n=16, seed=0):
    return write_csv(path, ["text", "label"], [(t, names[int(label)]) for t, label in sentiment_rows(n, seed)])


def three_labels(path, n=24):
    """Toy rows with labels 0, 1 and 2: the labels of the recipe checkpoint's three-way head."""
    return write_csv(path, ["text", "label"], [(t, str(i % 3)) for i, (t, _) in enumerate(sentiment_rows(n))])


def hf_logits(model, tokenizer, texts=TEXTS):
    model.eval()
    with torch.inference_mode():
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        return model(
            **{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        ).logits


# -- load_from_checkpoint ----------------------------------------------------------------------------------------------


def test_load_from_checkpoint_needs_nothing_else_and_predicts_what_load_predicts(
    trained_checkpoint, classifier, tmp_path
):
    data = torch.load(trained_checkpoint, weights_only=True)
    data["hyper_parameters"]["base"] = str(tmp_path / "deleted-base")  # the base it was trained from is gone
    torch.save(data, tmp_path / "moved.ckpt")
    model = SequenceClassifier.load_from_checkpoint(tmp_path / "moved.ckpt")
    assert model.labels == ["negative", "positive"] and model.task == "single_label"
    assert model.data_settings["max_length"] == 64
    assert (hf_logits(model.model, model.tokenizer) - classifier.logits(TEXTS)).abs().max() <= 1e-6


def test_load_from_checkpoint_maps_locations_as_lightning_documents(trained_checkpoint):
    seen = []

    def to_cpu(storage, location):
        seen.append(location)
        return storage

    model = SequenceClassifier.load_from_checkpoint(trained_checkpoint, map_location=to_cpu)
    assert seen and {p.device.type for p in model.parameters()} == {"cpu"}
    assert SequenceClassifier.load_from_checkpoint(trained_checkpoint, map_location="cpu").device.type == "cpu"


def test_load_from_checkpoint_is_strict_unless_told_otherwise(trained_checkpoint, tmp_path):
    data = torch.load(trained_checkpoint, weights_only=True)
    del data["state_dict"]["model.classifier.bias"]
    torch.save(data, tmp_path / "missing.ckpt")
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*model\.classifier\.bias"):
        SequenceClassifier.load_from_checkpoint(tmp_path / "missing.ckpt")
    model = SequenceClassifier.load_from_checkpoint(tmp_path / "missing.ckpt", strict=False)
    assert model.model.classifier.weight.shape == (2, 32)


def test_load_from_checkpoint_refuses_what_load_refuses(recipe_checkpoint, tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"state_dict": {}, "lightbert": {"x": Payload()}}, tmp_path / "evil.ckpt")
    with pytest.raises(LightbertError, match="could run code"):
        SequenceClassifier.load_from_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(LightbertError, match=r"is a recipe checkpoint .*, not a lightbert checkpoint") as error:
        SequenceClassifier.load_from_checkpoint(recipe_checkpoint.path)
    assert "SequenceClassifier(base=" in error.value.hint


def test_load_from_checkpoint_refuses_a_hyperparameter_import_payload(trained_checkpoint, tmp_path):
    data = torch.load(trained_checkpoint, weights_only=True)
    data["hyper_parameters"]["_instantiator"] = "os.system"
    torch.save(data, tmp_path / "payload.ckpt")
    with pytest.raises(LightbertError, match=r"asks to import 'os\.system'"):
        SequenceClassifier.load_from_checkpoint(tmp_path / "payload.ckpt")


# -- the Trainer's ckpt_path, from Python --------------------------------------------------------------------------


def test_trainer_validate_with_ckpt_path_gives_the_commands_numbers(trained_run, trained_checkpoint, tiny_distilbert):
    train, val = trained_run.parent.parent / "train.csv", trained_run.parent.parent / "val.csv"
    data = ClassificationDataModule(train=str(train), validation=str(val), tokenizer=str(tiny_distilbert))
    model = SequenceClassifier(base=str(tiny_distilbert))  # another architecture: rebuilt from the checkpoint
    [metrics] = quiet_trainer().validate(model, datamodule=data, ckpt_path=str(trained_checkpoint), verbose=False)
    assert model.model.config.model_type == "bert"
    command = run_cli(
        "validate", f"--data.train={train}", f"--data.validation={val}", f"--ckpt_path={trained_checkpoint}"
    )
    assert command.code == 0, command.err
    assert f"accuracy {metrics['val_accuracy']:.4f}" in command.out and f"loss {metrics['val_loss']:.4f}" in command.out


def test_trainer_fit_with_the_checkpoint_of_other_labels_says_so(trained_checkpoint, tiny_bert, tmp_path):
    rows = labelled(tmp_path / "t.csv", ["sports", "politics"])
    data = ClassificationDataModule(train=str(rows), validation=str(rows), tokenizer=str(tiny_bert))
    with pytest.raises(LightbertError, match=r"was trained for single_label \['negative', 'positive'\]"):
        quiet_trainer(max_steps=1).fit(SequenceClassifier(base=str(tiny_bert)), data, ckpt_path=str(trained_checkpoint))


# -- fine-tuning from any model ----------------------------------------------------------------------------------------


class StartingWeights(pl.Callback):
    """Records the classifier's weights and the optimizer's state when training starts."""

    def on_train_start(self, trainer, module):
        self.weights = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self.optimizer = trainer.optimizers[0]
        self.state = {
            name: copy.deepcopy(self.optimizer.state.get(p, {})) for name, p in module.model.named_parameters()
        }
        self.step = trainer.global_step


def fit_from(base, rows, callbacks=(), **model_kwargs):
    pl.seed_everything(0, verbose=False)
    data = ClassificationDataModule(train=str(rows), validation=str(rows), tokenizer=str(base), batch_size=8)
    model = SequenceClassifier(base=str(base), **model_kwargs)
    quiet_trainer(max_steps=2, callbacks=list(callbacks)).fit(model, data)
    return model


def test_fine_tuning_from_a_lightbert_checkpoint_starts_from_its_weights_with_a_fresh_optimizer(
    trained_checkpoint, classifier, tmp_path
):
    start = StartingWeights()
    model = fit_from(trained_checkpoint, labelled(tmp_path / "t.csv", ["negative", "positive"]), [start])
    assert start.step == 0 and all(state == {} for state in start.state.values())
    for name, value in classifier.model.state_dict().items():
        assert torch.equal(start.weights[name], value), name
    assert model.labels == ["negative", "positive"] and model.model.config.model_type == "bert"


def test_fine_tuning_from_a_lightbert_checkpoint_with_other_labels_needs_a_new_head(trained_checkpoint, tmp_path):
    rows = labelled(tmp_path / "t.csv", ["sports", "politics"])
    with pytest.raises(LightbertError, match=r"last\.ckpt was fine-tuned for single_label_classification"):
        fit_from(trained_checkpoint, rows)
    assert fit_from(trained_checkpoint, rows, new_head=True).labels == ["politics", "sports"]


def test_the_command_fine_tunes_from_a_lightbert_checkpoint(trained_checkpoint, tmp_path):
    rows = labelled(tmp_path / "t.csv", ["negative", "positive"])
    result = run_cli(*fit_args(trained_checkpoint, rows, rows, tmp_path / "runs"))
    assert result.code == 0, result.err
    assert load(tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt").labels == ["negative", "positive"]


def test_fine_tuning_from_a_recipe_checkpoint_starts_from_its_weights(recipe_checkpoint, tmp_path):
    start = StartingWeights()
    model = fit_from(recipe_checkpoint.path, three_labels(tmp_path / "t.csv"), [start])  # base from its hparams
    assert model.labels == ["0", "1", "2"]
    for name, value in recipe_checkpoint.module.model.state_dict().items():
        if not name.endswith(("position_ids", "token_type_ids")):
            assert torch.equal(start.weights[name], value), name
    assert all(state == {} for state in start.state.values())  # no carry_optimizer: a fresh optimizer


def test_a_recipe_checkpoint_without_hyperparameters_takes_its_directory_from_recipe_base(tiny_bert, tmp_path):
    recipe = train_recipe(tiny_bert, tmp_path / "recipe", hparams=False)
    rows = three_labels(tmp_path / "t.csv")
    result = run_cli(*fit_args(recipe.path, rows, rows, tmp_path / "runs", "--trainer.max_steps=1"))
    assert result.code == 2 and "pass --base DIR" in result.err
    result = run_cli(
        *fit_args(
            recipe.path, rows, rows, tmp_path / "runs", "--trainer.max_steps=1", f"--model.recipe_base={tiny_bert}"
        )
    )
    assert result.code == 0, result.err


# -- carrying on a recipe run --------------------------------------------------------------------------------------


def recipe_state_by_name(recipe):
    """The recipe's AdamW state by parameter name, mapped independently: AdamW numbered the module's parameters."""
    names = [name.removeprefix("model.") for name, _ in recipe.module.named_parameters()]
    state = torch.load(recipe.path, weights_only=True)["optimizer_states"][0]["state"]
    return {names[index]: entry for index, entry in state.items()}


def test_carried_moments_are_the_recipes_for_the_same_parameter(recipe_checkpoint, tmp_path):
    start = StartingWeights()
    fit_from(recipe_checkpoint.path, three_labels(tmp_path / "t.csv"), [start], carry_optimizer=True)
    expected = recipe_state_by_name(recipe_checkpoint)
    assert set(start.state) == set(expected)
    for name, state in start.state.items():
        assert torch.equal(state["exp_avg"], expected[name]["exp_avg"]), name
        assert torch.equal(state["exp_avg_sq"], expected[name]["exp_avg_sq"]), name
        assert float(state["step"]) == float(expected[name]["step"]) == 3.0


class FirstStep(pl.Callback):
    """Records the weights, gradients and learning rates right before the first optimizer step, and the weights
    after it."""

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == 0:
            named = dict(module.model.named_parameters())
            self.before = {n: p.detach().clone() for n, p in named.items()}
            self.grads = {n: p.grad.detach().clone() for n, p in named.items()}
            self.groups = [
                ([n for n, p in named.items() if any(p is q for q in group["params"])], dict(group))
                for group in optimizer.param_groups
            ]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            self.after = {n: p.detach().clone() for n, p in module.model.named_parameters()}


def test_the_first_carried_step_is_a_plain_adamw_step_from_the_recipes_state(recipe_checkpoint, tmp_path):
    step = FirstStep()
    fit_from(recipe_checkpoint.path, three_labels(tmp_path / "t.csv"), [step], carry_optimizer=True, weight_decay=0.1)
    recipe = recipe_state_by_name(recipe_checkpoint)
    parameters = {n: torch.nn.Parameter(v.clone()) for n, v in step.before.items()}
    groups = [
        {"params": [parameters[n] for n in names], "lr": group["lr"], "weight_decay": group["weight_decay"]}
        for names, group in step.groups
    ]
    plain = torch.optim.AdamW(groups, foreach=False)
    for name, parameter in parameters.items():
        parameter.grad = step.grads[name]
        plain.state[parameter] = {k: v.clone() for k, v in recipe[name].items()}
    plain.step()
    for name, parameter in parameters.items():
        assert (parameter.detach() - step.after[name]).abs().max() <= 1e-6, name


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        ("sgd", "was not trained with AdamW (its optimizer state holds momentum_buffer)"),
        ("adamw-two-groups", "does not map onto the model in the recipe's parameter order"),
    ],
)
def test_optimizer_state_that_does_not_map_one_to_one_stops_with_one_line(optimizer, message, tiny_bert, tmp_path):
    recipe = train_recipe(tiny_bert, tmp_path / "recipe", optimizer=optimizer)
    rows = three_labels(tmp_path / "t.csv")
    result = run_cli(*fit_args(recipe.path, rows, rows, tmp_path / "runs", "--model.carry_optimizer=true"))
    assert result.code == 2 and len(result.err_lines) == 1 and message in result.err, result.err
    assert not (tmp_path / "runs").exists()


def test_carrying_an_optimizer_needs_a_recipe_checkpoint_and_its_head(recipe_checkpoint, trained_checkpoint, tmp_path):
    rows = labelled(tmp_path / "t.csv", ["negative", "positive"])
    result = run_cli(*fit_args(trained_checkpoint, rows, rows, tmp_path / "runs", "--model.carry_optimizer=true"))
    assert result.code == 2 and "carries on a recipe checkpoint's optimizer" in result.err
    args = fit_args(recipe_checkpoint.path, rows, rows, tmp_path / "runs", "--model.carry_optimizer=true")
    result = run_cli(*args, "--model.new_head=true")
    assert result.code == 2 and "needs the recipe's own head" in result.err


def test_resuming_a_checkpoint_lightbert_did_not_write_names_it_and_how_to_start_from_it(recipe_checkpoint, tmp_path):
    rows = three_labels(tmp_path / "t.csv")
    result = run_cli(
        *fit_args(recipe_checkpoint.path, rows, rows, tmp_path / "runs", f"--ckpt_path={recipe_checkpoint.path}")
    )
    assert result.code == 2 and len(result.err_lines) == 1
    assert (
        "is a recipe checkpoint (a Lightning checkpoint of the common recipe), which lightbert cannot resume"
        in result.err
    )
    assert f"start from it: lightbert fit --model.base {recipe_checkpoint.path}" in result.err

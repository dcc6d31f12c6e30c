"""Every kind of model file the tests can make, handed to every command that takes one: each run succeeds or ends
with exit code 2 and one `error:` line; never an internal error or a traceback."""

from __future__ import annotations

import pytest
import torch
from helpers import copy_directory, run_cli, sentiment_rows, train_recipe, write_csv

COMMANDS = {
    "fit --ckpt_path": [
        "fit",
        "--model.base={base}",
        "--ckpt_path={model}",
        "--trainer.max_steps=1",
        "--data.batch_size=8",
    ],
    "fit --model.base": ["fit", "--model.base={model}", "--trainer.max_steps=1"],
    "validate --ckpt_path": ["validate", "--ckpt_path={model}"],
    "test --ckpt_path": ["test", "--ckpt_path={model}", "--data.test={data}"],
    "predict": ["predict", "{model}", "a good film"],
    "export": ["export", "{model}", "{out}"],
    "inspect": ["inspect", "{model}"],
}
DATA_OPTIONS = ["--data.train={data}", "--data.validation={data}", "--trainer.default_root_dir={runs}"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


class Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, trained_run, trained_checkpoint, recipe_checkpoint, exported_dir, tiny_bert):
    tmp = tmp_path_factory.mktemp("kinds")
    raw = trained_checkpoint.read_bytes()
    (tmp / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (tmp / "notes.ckpt").write_text("not a checkpoint\n")
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(tmp / "pwned")}}, tmp / "evil.ckpt")
    damaged = torch.load(trained_checkpoint, weights_only=True)
    del damaged["lightbert"]["tokenizer_files"]
    torch.save(damaged, tmp / "damaged.ckpt")
    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["hyper_parameters"]["_instantiator"] = "os.system"
    torch.save(payload, tmp / "payload.ckpt")
    (tmp / "empty").mkdir()
    lfs = copy_directory(exported_dir, tmp / "lfs")
    (lfs / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    return {
        "lightbert last": trained_checkpoint,
        "lightbert best": next((trained_run / "checkpoints").glob("best-*.ckpt")),
        "recipe with hyper-parameters": recipe_checkpoint.path,
        "recipe without hyper-parameters": train_recipe(tiny_bert, tmp / "bare-recipe", hparams=False).path,
        "huggingface classifier": exported_dir,
        "huggingface encoder without a head": tiny_bert,
        "truncated checkpoint": tmp / "truncated.ckpt",
        "text file named .ckpt": tmp / "notes.ckpt",
        "pickle that runs code": tmp / "evil.ckpt",
        "damaged lightbert section": tmp / "damaged.ckpt",
        "hyper-parameter import payload": tmp / "payload.ckpt",
        "empty directory": tmp / "empty",
        "git lfs pointer for weights": lfs,
        "missing path": tmp / "missing.ckpt",
    }, tmp


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_kind_of_model_given_to_every_command_succeeds_or_says_why_in_one_line(
    command, models, tiny_bert, tmp_path
):
    paths, tmp = models
    data = write_csv(
        tmp_path / "d.csv", ["text", "label"], [(t, ["negative", "positive"][int(y)]) for t, y in sentiment_rows(8)]
    )
    outcomes = {}
    for kind, model in paths.items():
        names = {
            "model": model,
            "base": tiny_bert,
            "data": data,
            "runs": tmp_path / kind / "runs",
            "out": tmp_path / kind / "out",
        }
        args = [a.format(**names) for a in COMMANDS[command]]
        if args[0] in ("fit", "validate", "test"):
            args += [a.format(**names) for a in DATA_OPTIONS] + QUIET
        result = run_cli(*args)
        assert result.code in (0, 2), f"{kind}: exit {result.code}: {result.err[-1500:]}"
        if result.code == 2:
            assert len(result.err_lines) == 1 and result.err_lines[0].startswith("error: "), f"{kind}: {result.err}"
            assert "internal error" not in result.err and "Traceback" not in result.err
        outcomes[kind] = result.code
    assert not (tmp / "pwned").exists()
    # Every command takes a lightbert checkpoint; resuming one with other data and options is refused (a resume with
    # the run's own options: tests/test_resume_run.py).
    assert outcomes["lightbert last"] == (2 if command == "fit --ckpt_path" else 0)

"""``lightbert.load``: a ready ``Classifier`` from any of the three kinds of model (``lightbert.sources``).

For a recipe checkpoint the config and tokenizer come from ``base`` or from a hyper-parameter naming a local model
directory; the weight names are matched by finding the one prefix that maps them onto the architecture (old
``position_ids`` buffers may be absent or extra; any other missing or unexpected weight is an error that lists them),
and the number of labels is read from the classifier weights.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightbert.checkpoint import tokenizer_from_files, unsafe_pickle_error
from lightbert.classifier import Classifier, check_precision
from lightbert.devices import resolve_device
from lightbert.errors import LightbertError, note, one_line
from lightbert.hf import (
    build_classifier,
    check_loaded,
    check_model_dir,
    check_model_size,
    check_tokenizer_fits,
    config_from_dict,
    effective_max_length,
    is_buffer_key,
    label_dependent_keys,
    load_config,
    load_tokenizer,
    pretrained_classifier,
    tokenizer_files_in,
)
from lightbert.sources import KIND_NAMES, ModelInfo, ModelSource, identify, model_info


@dataclass
class OpenedModel:
    """An HF sequence classifier (float32, eval mode, on the CPU) with its tokenizer, input limit and origin."""

    model: Any
    tokenizer: Any
    max_length: int
    info: ModelInfo


def load(
    path: str | Path,
    base: str | Path | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Classifier:
    """A ready classifier (eval mode) from a lightbert checkpoint, a Hugging Face model directory, or a recipe
    checkpoint (``base``: an HF directory of the same architecture), on ``device`` (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``, ``mps``) in ``precision`` (``fp32``, ``bf16``, ``int8``; see ``Classifier.set_precision``). The device
    and precision are checked before anything loads. ``trust_checkpoint`` allows full unpickling, for checkpoints the
    user made themselves."""
    check_precision(precision)
    target = resolve_device(device, precision)
    if base is not None:
        check_model_dir(base, what="--base")
    opened = open_model(identify(path, trust_checkpoint=trust_checkpoint), base)
    opened.model.to(target)
    return Classifier(opened.model, opened.tokenizer, opened.max_length, opened.info).set_precision(precision)


def open_model(source: ModelSource, base: str | Path | None = None) -> OpenedModel:
    """The HF model, tokenizer and input limit of an identified source."""
    if source.kind == "lightbert":
        return _open_lightbert(source)
    if source.kind == "huggingface":
        return _open_huggingface(source)
    return _open_recipe(source, base)


def classifier_from_config(config: Any) -> Any:
    """An HF sequence classifier of ``config`` (an HF config object or its JSON form), float32, weights random."""
    from transformers import AutoModelForSequenceClassification

    if isinstance(config, dict):
        config = config_from_dict(config)
    try:
        return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    except Exception as err:  # a config that validates can still describe no buildable model (a size of -5)
        raise LightbertError(
            f"cannot build a {config.model_type} classifier from the model config: {one_line(str(err))[:160]}",
            "fix the config, or use another checkpoint",
        ) from None


def lightbert_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The HF model's weights in a lightbert checkpoint (the ``model.`` attribute of ``SequenceClassifier``)."""
    return {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


def _open_lightbert(source: ModelSource) -> OpenedModel:
    assert source.checkpoint is not None
    config = config_from_dict(source.config, f"{source.path}'s model config")
    weights = lightbert_weights(source.checkpoint)
    check_model_size(config, sum(w.numel() for w in weights.values()), f"{source.path}'s model config")
    model = classifier_from_config(config)
    _load_strict(model, weights, source.path)
    tokenizer = tokenizer_from_files(source.section["tokenizer_files"], str(source.path))
    check_tokenizer_fits(tokenizer, config, str(source.path))
    data = source.section.get("data") or {}
    max_length = int(data.get("max_length") or effective_max_length(512, tokenizer, config))
    return OpenedModel(model, tokenizer, max_length, model_info(source))


def require_tokenizer_files(path: Path) -> None:
    if not tokenizer_files_in(path):
        raise LightbertError(
            f"{path} has no tokenizer files", "save the tokenizer into the same directory with save_pretrained"
        )


def _open_huggingface(source: ModelSource) -> OpenedModel:
    path = source.path
    require_tokenizer_files(path)
    try:
        model = pretrained_classifier(path)
    except pickle.UnpicklingError as err:
        raise unsafe_pickle_error(path / "pytorch_model.bin", err) from None
    tokenizer = load_tokenizer(path)
    check_tokenizer_fits(tokenizer, model.config, str(path))
    return OpenedModel(model.eval(), tokenizer, effective_max_length(512, tokenizer, model.config), model_info(source))


def local_model_dirs(value: Any) -> list[Path]:
    """Existing local HF model directories named anywhere in (nested) hyper-parameters."""
    found: list[Path] = []
    if isinstance(value, str) and value and len(value) < 4096 and "://" not in value:
        candidate = Path(value)
        try:
            if candidate.is_dir() and (candidate / "config.json").is_file():
                found.append(candidate)
        except OSError:
            pass
    elif isinstance(value, dict):
        for item in value.values():
            found += local_model_dirs(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += local_model_dirs(item)
    return found


def recipe_base(source: ModelSource, base: str | Path | None) -> Path:
    """The HF directory that gives a recipe checkpoint its config and tokenizer: ``base``, else the first local model
    directory its hyper-parameters name."""
    if base is None:
        candidates = local_model_dirs((source.checkpoint or {}).get("hyper_parameters"))
        if not candidates:
            raise LightbertError(
                f"{source.path} is a recipe checkpoint without a model config or tokenizer",
                "pass --base DIR, a Hugging Face model directory of the same architecture",
            )
        base = candidates[0]
    return check_model_dir(base)


def match_prefix(checkpoint_keys: list[str], model_keys: list[str]) -> str:
    """The one prefix P with ``P + model_key`` in the checkpoint for (nearly) every model key, e.g. ``"model."``."""
    wanted = {k for k in model_keys if not is_buffer_key(k)}
    votes: Counter[str] = Counter()
    for key in checkpoint_keys:
        for model_key in wanted:
            if key.endswith(model_key) and (len(key) == len(model_key) or key[-len(model_key) - 1] == "."):
                votes[key[: len(key) - len(model_key)]] += 1
    if not votes:
        return ""
    best = max(votes.values())
    return min((p for p, v in votes.items() if v == best), key=len)


@dataclass
class RecipeWeights:
    """A recipe checkpoint's HF model weights: the config they fit (labels counted from the head), the prefix
    they sit under in the state dict, the weights without it, and the state dict's other tensors."""

    base: Path
    config: Any
    prefix: str
    weights: dict[str, torch.Tensor]
    outside: list[str]


def recipe_weights(source: ModelSource, base: str | Path | None) -> RecipeWeights:
    """Find the HF model in a recipe checkpoint's state dict (see the module docstring)."""
    from transformers import AutoModelForSequenceClassification

    base_dir = recipe_base(source, base)
    config = load_config(base_dir)
    state_dict = (source.checkpoint or {}).get("state_dict") or {}
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    head_keys = label_dependent_keys(config)
    with torch.device("meta"):
        probe = AutoModelForSequenceClassification.from_config(config)
    prefix = match_prefix(list(tensors), list(probe.state_dict()))
    head = next((prefix + k for k in head_keys if prefix + k in tensors), None)
    if head is None:
        raise LightbertError(
            f"{source.path} has no {config.model_type} classification head under any prefix"
            f" (looked for {', '.join(head_keys)})",
            f"check that --base ({base_dir}) has the architecture the checkpoint was trained with",
        )
    num_labels = int(tensors[head].shape[0])
    if num_labels != config.num_labels:
        config.num_labels = num_labels
        config.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        config.label2id = {f"LABEL_{i}": i for i in range(num_labels)}
    if config.problem_type is None and num_labels == 1:
        config.problem_type = "regression"
    config.architectures = [type(probe).__name__]  # a classifier now, whatever the base directory was
    weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    outside = sorted(k for k in tensors if not k.startswith(prefix))
    return RecipeWeights(base_dir, config, prefix, weights, outside)


def _open_recipe(source: ModelSource, base: str | Path | None) -> OpenedModel:
    found = recipe_weights(source, base)
    check_model_size(found.config, sum(w.numel() for w in found.weights.values()), f"{found.base}/config.json")
    model = classifier_from_config(found.config)
    _load_strict(model, found.weights, source.path, extra_unexpected=found.outside, base=found.base)
    tokenizer = load_tokenizer(found.base)
    check_tokenizer_fits(tokenizer, found.config, str(found.base))
    max_length = effective_max_length(512, tokenizer, found.config)
    return OpenedModel(model, tokenizer, max_length, model_info(source, base=found.base, prefix=found.prefix))


def _load_strict(
    model: Any,
    weights: dict[str, torch.Tensor],
    path: Path,
    extra_unexpected: list[str] | None = None,
    base: Path | None = None,
) -> None:
    """Load all weights or fail listing what is missing, unexpected or mis-shaped (``lightbert.hf.check_loaded``)."""
    if base is not None:
        hint = f"check that --base ({base}) has the architecture the checkpoint was trained with"
    else:
        hint = "the file is corrupt; use another checkpoint"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatched = [
        (k, tuple(v.shape), expected[k]) for k, v in weights.items() if k in expected and tuple(v.shape) != expected[k]
    ]
    check_loaded(path, [], [], hint, mismatched)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    check_loaded(path, missing, [*unexpected, *(extra_unexpected or [])], hint)
    model.eval()


# -- where fine-tuning starts ---------------------------------------------------------------------------------------


@dataclass
class StartingPoint:
    """What ``lightbert fit --model.base`` starts from: any model ``load`` takes. ``config`` is its HF config (a
    classifier's, with its labels, for a checkpoint); ``weights`` its HF weights (None: ``from_pretrained`` reads
    them from the directory); ``recipe`` the recipe checkpoint's parts (for carrying its optimizer state)."""

    source: ModelSource
    config: Any
    weights: dict[str, torch.Tensor] | None = None
    tokenizer_dir: Path | None = None
    recipe: RecipeWeights | None = None

    @property
    def kind(self) -> str:
        return self.source.kind

    def tokenizer(self) -> Any:
        if self.tokenizer_dir is not None:
            return load_tokenizer(self.tokenizer_dir)
        return tokenizer_from_files(self.source.section["tokenizer_files"], str(self.source.path))


def starting_point(
    base: str | Path, recipe_base: str | Path | None = None, trust_checkpoint: bool = False
) -> StartingPoint:
    """Identify and check the model fine-tuning starts from (see ``StartingPoint``)."""
    if "://" not in str(base) and not Path(base).exists():
        raise LightbertError(
            f"base model not found: {base}",
            "give a Hugging Face model directory or a checkpoint; nothing is downloaded",
        )
    source = identify(base, trust_checkpoint=trust_checkpoint)
    if recipe_base is not None and source.kind != "recipe":
        raise LightbertError(
            f"--model.recipe_base is for a recipe checkpoint, and {base} is a {KIND_NAMES[source.kind]}",
            "leave --model.recipe_base out",
        )
    if source.kind == "huggingface":
        require_tokenizer_files(source.path)
        return StartingPoint(source, load_config(source.path), tokenizer_dir=source.path)
    if source.kind == "lightbert":
        assert source.checkpoint is not None
        config = config_from_dict(source.config)
        if not config.architectures:  # a classifier, whatever its config says (written before 0.2 without)
            with torch.device("meta"):
                config.architectures = [type(classifier_from_config(config)).__name__]
        return StartingPoint(source, config, weights=lightbert_weights(source.checkpoint))
    found = recipe_weights(source, recipe_base)
    if found.outside:
        raise LightbertError(
            f"{source.path} holds weights outside its Hugging Face model: {', '.join(found.outside[:6])}",
            "start from a checkpoint that holds only the classifier, or export the classifier with save_pretrained",
        )
    return StartingPoint(source, found.config, found.weights, tokenizer_dir=found.base, recipe=found)


def build_from_start(
    start: StartingPoint, plan: Any, task: str, labels: list[str] | None, say: Callable[[str], None] = note
) -> Any:
    """The HF classifier fine-tuning starts with: the starting point's weights with this task's head (kept,
    reordered or re-initialised as ``plan`` says; see ``lightbert.hf.build_classifier``)."""
    if start.weights is None:
        return build_classifier(plan, task, labels, start.source.path, say=say)
    weights = dict(start.weights)
    if plan.base_head is not None and not plan.keep_head:
        for key in label_dependent_keys(plan.config):
            weights.pop(key, None)
    load = lambda model, state: _load_head_free(model, state, start)  # noqa: E731
    return build_classifier(plan, task, labels, weights, load, say=say)


def _load_head_free(model: Any, weights: dict[str, torch.Tensor], start: StartingPoint) -> None:
    """Load ``weights`` strictly except for the label-dependent head weights that a new head re-initialises."""
    head = set(label_dependent_keys(model.config))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    check_loaded(start.source.path, missing, unexpected, "use another checkpoint", new_allowed=head)


ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}


def recipe_adamw_state(start: StartingPoint, model: Any, head_rows: list[int] | None = None) -> dict[str, Any]:
    """The recipe checkpoint's AdamW moments and step counts for each parameter of ``model`` (the HF classifier
    built from it), by name. The optimizer state numbers parameters in the order the recipe handed them to AdamW:
    ``self.parameters()`` of a module holding only the HF model, which is the HF model's own parameter order. Where
    they do not map one to one (another optimizer, other parameter counts or shapes), one line says why.
    ``head_rows`` reorders the rows of the label-dependent head parameters, as the kept head's weights are."""
    path = start.source.path
    hint = "start from it without --model.carry_optimizer (a fresh optimizer)"
    optimizers = (start.source.checkpoint or {}).get("optimizer_states") or []
    if len(optimizers) != 1:
        raise LightbertError(f"{path} holds {len(optimizers)} optimizer states, not one AdamW's", hint)
    state, groups = optimizers[0].get("state") or {}, optimizers[0].get("param_groups") or []
    kinds = {frozenset(k for k in entry if k != "max_exp_avg_sq") for entry in state.values()}
    if not state or kinds != {frozenset(ADAM_STATE)}:
        found = ", ".join(sorted({k for entry in state.values() for k in entry})) or "nothing"
        raise LightbertError(f"{path} was not trained with AdamW (its optimizer state holds {found})", hint)
    for group in groups:
        if group.get("amsgrad"):
            raise LightbertError(f"{path} was trained with AMSGrad, which lightbert's AdamW does not use", hint)
        if group.get("decoupled_weight_decay") is False and group.get("weight_decay", 0) > 0:
            raise LightbertError(f"{path} was trained with Adam and L2 weight decay, not AdamW", hint)
    order = [index for group in groups for index in group.get("params", [])]
    parameters = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if len(order) != len(parameters):
        raise LightbertError(
            f"{path}'s optimizer holds {len(order)} parameters, the model has {len(parameters)}",
            hint + ", or check that the recipe optimized only the classifier",
        )
    head = set(label_dependent_keys(model.config))
    carried: dict[str, Any] = {}
    for position, (index, (name, parameter)) in enumerate(zip(order, parameters, strict=True)):
        entry = state.get(index)
        if entry is None:
            continue  # never stepped (frozen in the recipe): it starts fresh
        moments = {key: entry[key] for key in ("exp_avg", "exp_avg_sq")}
        if name in head and head_rows is not None:
            moments = {key: value[torch.tensor(head_rows)] for key, value in moments.items()}
        for key, value in moments.items():
            if tuple(value.shape) != tuple(parameter.shape):
                raise LightbertError(
                    f"{path}'s optimizer state does not map onto the model in the recipe's parameter order"
                    f" (parameter {position}, {name}: {key} has shape {list(value.shape)},"
                    f" the parameter {list(parameter.shape)})",
                    hint,
                )
        step = entry["step"]
        carried[name] = {"step": float(step.item() if isinstance(step, torch.Tensor) else step), **moments}
    return carried

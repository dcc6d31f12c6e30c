"""Hugging Face model directories, configs, tokenizers and classification heads.

Everything loads from local files only (``local_files_only=True``) and ``trust_remote_code`` is always False.
Head planning: a base that is already a fine-tuned classifier keeps its head when the data has the same labels
(rows reordered if their order differs); other labels need ``new_head``, which re-initialises the label-dependent
head weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightbert.errors import LightbertError, note, one_line
from lightbert.safety import check_model_files, check_safetensors, weight_index_shards

PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
# Buffers that transformers stopped (or started) saving across versions; their absence or presence is harmless.
NON_PERSISTENT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "spm.model",
)


def check_model_dir(path: str | Path, what: str = "base model", weights: bool = False) -> Path:
    """A local Hugging Face model directory that is safe to load (config.json without remote code; weight files
    that are complete, when ``weights``), or a clear error. Nothing is ever downloaded."""
    path = Path(path)
    if "://" in str(path):
        raise LightbertError(
            f"{what} must be a local directory, not a URL: {path}",
            "download the model yourself and check where it comes from",
        )
    if not path.is_dir():
        raise LightbertError(
            f"{what} directory not found: {path}", "give a local Hugging Face model directory; nothing is downloaded"
        )
    check_model_files(path, weights=weights)
    return path


def tokenizer_files_in(path: Path) -> list[str]:
    """The tokenizer files a directory holds."""
    return [name for name in TOKENIZER_FILES if (path / name).is_file()]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bars or "newly initialized" notices (expected for a new head); errors still show."""
    from transformers.utils import logging as hf_logging

    verbosity, progress_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bars:
            hf_logging.enable_progress_bar()


# -- loading weights strictly ---------------------------------------------------------------------------------------


def is_buffer_key(key: str) -> bool:
    return key.endswith(NON_PERSISTENT_BUFFERS)


def head_keys(model: Any) -> set[str]:
    """The weights of a sequence classifier's head: those outside its base model (``bert.``, ``roberta.``...),
    e.g. ``classifier.weight`` or DistilBERT's ``pre_classifier``, plus the base model's pooler, which only the
    head uses."""
    prefix = f"{model.base_model_prefix}."
    return {k for k in model.state_dict() if not k.startswith(prefix) or k.startswith(f"{prefix}pooler.")}


def no_head_error(path: str | Path, architectures: Any = None) -> LightbertError:
    what = f" (it is a {', '.join(architectures)})" if isinstance(architectures, list) and architectures else ""
    return LightbertError(
        f"{path} has no trained classification head{what}; its answers would come from random weights",
        f"fine-tune it first: lightbert fit --model.base {path} --data.train FILE",
    )


def check_loaded(
    path: str | Path,
    missing: Any,
    unexpected: Any,
    hint: str,
    mismatched: Any = (),  # (name, shape found, shape expected)
    new_allowed: set[str] | None = None,
) -> list[str]:
    """The one judgement of every weight load (lightbert and recipe checkpoints, HF directories): any missing,
    unexpected or mis-shaped weight is an error that lists them, except the buffers transformers (de)serialises
    differently across versions, and the weights in ``new_allowed`` (a new head, when fine-tuning), which are
    returned. Weights that transformers ties (an LM decoder to the embeddings) never appear: it reports none."""
    missing = sorted(k for k in missing if not is_buffer_key(k))
    unexpected = sorted(k for k in unexpected if not is_buffer_key(k))
    new = [k for k in missing if new_allowed is not None and k in new_allowed]
    missing = [k for k in missing if k not in new]
    parts = []
    if mismatched:
        shapes = sorted(f"{name} {tuple(got)} vs {tuple(wanted)}" for name, got, wanted in mismatched)
        parts.append(f"wrong shape {len(shapes)}: {', '.join(shapes[:5])}")
    if missing:
        parts.append(f"missing {len(missing)}: {', '.join(missing[:6])}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:6])}")
    if parts:
        raise LightbertError(f"{path} does not match its model config: {'; '.join(parts)}", hint)
    return new


WEIGHTS_HINT = "its weight files do not fit its config.json; save the model again with save_pretrained"


def _from_pretrained(path: Path, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``from_pretrained`` from local files, float32, no remote code, with transformers' loading report. Mis-shaped
    weights are reported rather than raised, so that ``check_loaded`` lists them."""
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():
        try:
            return AutoModelForSequenceClassification.from_pretrained(
                str(path),
                dtype=torch.float32,
                local_files_only=True,
                trust_remote_code=False,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **kwargs,
            )
        except pickle.UnpicklingError:
            raise
        except Exception as err:  # what a config or a weight file transformers cannot use raises varies
            raise LightbertError(
                f"cannot load the model in {path}: {one_line(str(err) or type(err).__name__)[:200]}", WEIGHTS_HINT
            ) from None


LAYER_FIELDS = ("num_hidden_layers", "n_layers", "num_layers", "num_attention_heads", "n_heads")
MAX_LAYERS = 1024  # far beyond any encoder; a config asking for more would take the process's memory and time


def check_model_size(config: Any, stored: int, where: str) -> None:
    """Refuse a config that describes a model far larger than the ``stored`` weights (a count of numbers) meant
    for it, before any memory is allocated: a config with ``vocab_size`` 10**12 would otherwise take all of it."""
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            probe = AutoModelForSequenceClassification.from_config(config)
    except Exception as err:  # a config that validates can still describe no buildable model (a size of -5)
        raise LightbertError(
            f"cannot build a classifier from {where}: {one_line(str(err) or type(err).__name__)[:160]}",
            "fix the config, or save the model again with save_pretrained",
        ) from None
    needed = sum(t.numel() for t in probe.state_dict().values())
    if needed > 2 * stored + 1_000_000:
        raise LightbertError(
            f"{where} describes a model of {needed:,} weights, but its weight files hold {stored:,}",
            "the config does not belong to these weights; save the model again with save_pretrained",
        )


def pretrained_classifier(path: Path) -> Any:
    """The sequence classifier in HF directory ``path``, float32, every weight loaded from its files
    (``check_loaded``); a directory without a trained head is refused (``no_head_error``)."""
    config = load_config(path)
    check_model_size(config, sum(math.prod(shape) for shape in weight_shapes(path).values()), f"{path}/config.json")
    model, info = _from_pretrained(path, config=config)
    missing = {k for k in info["missing_keys"] if not is_buffer_key(k)}
    if missing and missing <= head_keys(model):
        raise no_head_error(path, getattr(model.config, "architectures", None))
    check_loaded(path, missing, info["unexpected_keys"], WEIGHTS_HINT, info["mismatched_keys"])
    return model


def pretrained_base(path: Path, config: Any) -> tuple[Any, list[str]]:
    """The classifier that fine-tuning starts with from HF directory ``path`` (with ``config``), and the head
    weights that the directory lacks or holds in another shape, which are initialised. The base model's weights
    must all be there (``check_loaded``); weights outside the classifier (a pre-training head such as
    ``cls.predictions``) are not used."""
    check_model_size(config, sum(math.prod(shape) for shape in weight_shapes(path).values()), f"{path}/config.json")
    model, info = _from_pretrained(path, config=config)
    heads = head_keys(model)
    prefix = f"{model.base_model_prefix}."
    unexpected = [k for k in info["unexpected_keys"] if k.startswith(prefix)]
    mismatched = [m for m in info["mismatched_keys"] if m[0] not in heads]
    new = check_loaded(path, info["missing_keys"], unexpected, WEIGHTS_HINT, mismatched, new_allowed=heads)
    return model, sorted({*new, *(m[0] for m in info["mismatched_keys"] if m[0] in heads)})


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of the weights in an HF directory's files, by name, read without loading them."""
    shapes: dict[str, tuple[int, ...]] = {}
    if (path / "model.safetensors").is_file():
        return check_safetensors(path / "model.safetensors")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            files = sorted(set(weight_index_shards(path / index)))
            break
    else:
        files = ["pytorch_model.bin"] if (path / "pytorch_model.bin").is_file() else []
    for name in files:
        if name.endswith(".safetensors"):
            shapes |= check_safetensors(path / name)
        else:
            try:
                state = torch.load(path / name, map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError):  # said when it loads
                continue
            shapes |= {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return shapes


def head_outputs(config: Any, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """How many outputs the classification head in ``shapes`` (weights by name) has for an HF ``config``; None when
    the weights hold no classification head."""
    for key in label_dependent_keys(config):
        if shapes.get(key):
            return int(shapes[key][0])
    return None


# A sample of everyday text, for checks that need some (export's verification, the unknown-token check).
SAMPLE_TEXTS = [
    "a gripping, beautifully acted film",
    "dull, lifeless and far too long",
    "",
    "The senate passed the bill on Tuesday after a long debate.",
    "Ünïcödé — emoji 🎬 and 中文 text",
    "ok " * 300,  # longer than any model's limit: truncation must agree too
]
UNKNOWN_TOKEN_LIMIT = 0.5  # above this share of [UNK] tokens, the model sees noise


def unknown_token_share(tokenizer: Any, texts: list[str]) -> float | None:
    """The share of the tokens of ``texts`` that ``tokenizer`` makes its unknown token (None: no tokens, or a
    tokenizer without an unknown token, such as byte-level BPE)."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if unknown is None or not texts:
        return None
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=128)["input_ids"]
    tokens = [token for ids in encoded for token in ids]
    return sum(token == unknown for token in tokens) / len(tokens) if tokens else None


def unknown_token_warning(tokenizer: Any, texts: list[str], what: str) -> str | None:
    """A warning line when ``tokenizer`` makes most of ``texts`` (``what``: where they come from) unknown tokens."""
    share = unknown_token_share(tokenizer, texts)
    if share is None or share <= UNKNOWN_TOKEN_LIMIT:
        return None
    return (
        f"warning: the tokenizer makes {share:.0%} of the tokens of {what} its unknown token"
        f" {getattr(tokenizer, 'unk_token', '')}; a model cannot tell such texts apart"
        " (check that the tokenizer files belong to the model, and its vocabulary to the language)"
    )


TOKENIZER_CLASS = re.compile(r"[A-Za-z][A-Za-z0-9_]*Tokenizer(Fast)?")
TOKENIZER_HINT = (
    "its tokenizer files are damaged or not a transformers tokenizer; save the tokenizer with save_pretrained"
)


def check_tokenizer_files(path: Path, where: str) -> None:
    """The JSON files of a tokenizer are objects, and ``tokenizer_class`` names a tokenizer (transformers looks the
    name up among all its exports: ``"pipeline"`` or ``"AutoModel"`` would be called)."""
    for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            raise LightbertError(f"{where}'s {name} is not valid JSON", TOKENIZER_HINT) from None
        if not isinstance(data, dict):
            raise LightbertError(f"{where}'s {name} is not a JSON object", TOKENIZER_HINT)
        named = data.get("tokenizer_class") if name == "tokenizer_config.json" else None
        if named is not None and not (isinstance(named, str) and TOKENIZER_CLASS.fullmatch(named)):
            raise LightbertError(
                f"{where}'s tokenizer_config.json names tokenizer_class {named!r:.60}, which is not a tokenizer",
                'set "tokenizer_class" to its class (e.g. "BertTokenizer"), or save the tokenizer with save_pretrained',
            )


def load_tokenizer(path: str | Path, where: str | None = None) -> Any:
    """The tokenizer in directory ``path`` (``where`` names it in messages), from local files, no remote code;
    files it cannot be built from are one ``LightbertError``."""
    from transformers import AutoTokenizer

    where = where or str(path)
    check_tokenizer_files(Path(path), where)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        tokenizer(["a probe"], ["of pairs"], truncation=True, max_length=16)  # some damage shows only when used
        return tokenizer
    except Exception as err:  # a damaged file surfaces as anything from KeyError to the Rust library's Exception
        raise LightbertError(
            f"cannot load the tokenizer of {where}: {one_line(str(err) or type(err).__name__)[:160]}", TOKENIZER_HINT
        ) from None


def _config_error(where: str, model_type: Any, err: Exception) -> LightbertError:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return LightbertError(
            f"{where} has model_type {model_type!r}, which transformers {transformers.__version__} does not know",
            "fix model_type, or use a transformers release that has this architecture",
        )
    return LightbertError(
        f"{where} is not a valid {model_type} config: {one_line(str(err))[:200]}",
        "fix that field, or save the model again with save_pretrained",
    )


def _sized(config: Any, where: str) -> Any:
    """``config``, unless it asks for more layers or heads than any encoder has (building even an empty model of
    10**12 layers would take the process's memory and time)."""
    for field in LAYER_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > MAX_LAYERS:
            raise LightbertError(f"{where} asks for {field} {value:,}", "fix the config; no encoder has that many")
    return config


def check_tokenizer_fits(tokenizer: Any, config: Any, where: str) -> None:
    """Refuse a tokenizer that makes token ids the model has no embedding for (another model's tokenizer, or a
    special token added by hand to its config)."""
    embedded = getattr(config, "vocab_size", None)
    if isinstance(embedded, int) and len(tokenizer) > embedded:
        raise LightbertError(
            f"{where}'s tokenizer has {len(tokenizer):,} tokens but the model embeds {embedded:,}",
            "use the tokenizer saved with this model",
        )


def load_config(path: str | Path) -> Any:
    from transformers import AutoConfig

    where = f"{Path(path) / 'config.json'}"
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # a field of the wrong type is a ValueError, TypeError or a validation error
        raise _config_error(where, _json_model_type(Path(path)), err) from None
    return _sized(config, where)


def _json_model_type(path: Path) -> Any:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def config_from_dict(data: dict[str, Any], where: str = "the checkpoint's model config") -> Any:
    """An HF config object from its JSON form (as a lightbert checkpoint stores it)."""
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **data)
    except Exception as err:  # a field of the wrong type is a ValueError, TypeError or a validation error
        raise _config_error(where, model_type, err) from None
    return _sized(config, where)


def position_limit(config: Any) -> int:
    """The longest input, in tokens, that a model's position embeddings allow."""
    limit = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"):
        limit -= 2  # positions start after padding_idx
    return int(limit)


def effective_max_length(requested: int, tokenizer: Any, config: Any) -> int:
    """``requested`` clamped to the model's position limit and the tokenizer's own limit."""
    limits = [requested, position_limit(config)]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    return min(limits)


# -- labels and tasks in an HF config --------------------------------------------------------------------------------


def task_of(config: Any) -> str:
    """single_label, multi_label or regression, from an HF config object."""
    if config.problem_type == "multi_label_classification":
        return "multi_label"
    if config.problem_type == "regression" or config.num_labels == 1:
        return "regression"
    return "single_label"


def labels_of(config: Any) -> list[str]:
    """The label names of an HF config (object or JSON dict), in output order."""
    id2label = config.get("id2label") if isinstance(config, dict) else config.id2label
    id2label = id2label or {}
    return [str(id2label[key]) for key in sorted(id2label, key=int)]


THRESHOLDS_KEY = "label_thresholds"  # multi-label: each label's threshold, in the config (lightbert's own field)


def thresholds_of(config: Any, source: str = "the model") -> dict[str, float] | None:
    """A multi-label config's per-label thresholds (``--model.tune_thresholds``), checked; None when it has none."""
    stored = getattr(config, THRESHOLDS_KEY, None)
    if stored is None or task_of(config) != "multi_label":
        return None
    labels = labels_of(config)
    valid = isinstance(stored, dict) and set(stored) == set(labels)
    valid = valid and all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in stored.values())
    if not valid:
        raise LightbertError(
            f"{source} has {THRESHOLDS_KEY} that are not one number in [0, 1] per label",
            f"remove {THRESHOLDS_KEY} from its config.json, or export it again",
        )
    return {name: float(stored[name]) for name in labels}


def label_config(task: str, labels: list[str] | None) -> dict[str, Any]:
    """The HF config fields that describe a classification head."""
    names = labels if task != "regression" else None
    id2label = dict(enumerate(names)) if names else {0: "score"}
    return {
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
        "problem_type": PROBLEM_TYPES[task],
    }


def head_labels(config: Any) -> list[str] | None:
    """The label names of a base that already is a fine-tuned sequence classifier, else None. Generic names
    (``LABEL_0``...) are read as the integer labels ``0``, ``1``..., which is how lightbert names those."""
    if not any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or [])):
        return None
    if config.problem_type == "regression" or config.num_labels == 1:
        return ["score"]
    return [n[len("LABEL_") :] if n == f"LABEL_{i}" else n for i, n in enumerate(labels_of(config))]


def label_dependent_keys(config: Any) -> list[str]:
    """The head parameters whose first dimension is the number of labels (found by building the architecture
    twice on the meta device with different label counts), e.g. ``classifier.weight``, ``classifier.bias``."""
    from transformers import AutoModelForSequenceClassification

    shapes = []
    for n in (2, 3):
        trial = copy.deepcopy(config)
        trial.num_labels = n  # the setter makes id2label/label2id fit
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(trial)
        shapes.append({k: tuple(v.shape) for k, v in model.state_dict().items()})
    return [k for k in shapes[0] if shapes[0][k] != shapes[1][k]]


# -- starting a classifier from a base --------------------------------------------------------------------------------


@dataclass
class HeadPlan:
    """How a classifier starts from a base: the base's config, its head's labels (None when it has no
    classification head), the labels wanted, and whether the base's head is kept."""

    config: Any
    base_head: list[str] | None
    wanted: list[str]
    keep_head: bool


def plan_head(config: Any, task: str, labels: list[str] | None, new_head: bool, base: str | Path) -> HeadPlan:
    """Check a base's config (``base`` names it in messages) against the task and labels before anything is built.
    Raises if the base is a classifier for other labels and ``new_head`` is not set."""
    base_head = head_labels(config)
    wanted = list(labels or []) if task != "regression" else ["score"]
    same_problem = PROBLEM_TYPES[task] == (config.problem_type or PROBLEM_TYPES[task])
    keep_head = base_head is not None and set(base_head) == set(wanted) and same_problem
    if base_head is not None and not keep_head and not new_head:
        raise LightbertError(
            f"{base} was fine-tuned for {config.problem_type or 'labels'} [{', '.join(base_head)}], "
            f"the data has {task} [{', '.join(wanted)}]",
            "pass --model.new_head true to start a new classification head",
        )
    return HeadPlan(config, base_head, wanted, keep_head)


def head_order(plan: HeadPlan) -> list[int] | None:
    """For a kept head whose labels come in another order: the base's row for each wanted label."""
    if plan.keep_head and plan.base_head != plan.wanted:
        assert plan.base_head is not None
        return [plan.base_head.index(name) for name in plan.wanted]
    return None


def build_classifier(
    plan: HeadPlan,
    task: str,
    labels: list[str] | None,
    weights: Path | dict[str, torch.Tensor],
    load_weights: Callable[[Any, dict[str, torch.Tensor]], None] | None = None,
    say: Callable[[str], None] = note,
) -> Any:
    """The HF classifier of ``plan`` in float32, with this task's head: the base's head kept (rows reordered to
    ``labels``) or re-initialised (said on stderr). ``weights`` is the base directory (read by ``from_pretrained``
    from local files only) or the base's weights (loaded by ``load_weights(model, weights)``, without the head's
    label-dependent weights when the head is replaced). ``say`` tells which head weights are new."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(plan.config)
    for key, value in label_config(task, labels).items():
        setattr(config, key, value)
    replace_head = plan.base_head is not None and not plan.keep_head
    new: list[str] = []
    if isinstance(weights, Path):
        model, new = pretrained_base(weights, config)
    else:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        assert load_weights is not None
        load_weights(model, weights)
    if plan.base_head is not None:
        keys = label_dependent_keys(config)
        parameters = dict(model.named_parameters())
        order = head_order(plan)
        with torch.no_grad():
            if order is not None:
                for key in keys:
                    parameters[key].copy_(parameters[key][torch.tensor(order)])
            elif replace_head:
                for key in keys:
                    model._init_weights(model.get_submodule(key.rsplit(".", 1)[0]))
                say(f"new classification head: re-initialised {', '.join(keys)}")
                return model.train()
    if new:
        say(f"new classification head: initialised {', '.join(new)} ({weights} has no trained one)")
    return model.train()

"""Typed run configuration, validated once, with clear one-sentence errors.

Resolution order (later wins): built-in defaults < the task's paper configuration <
a config file (YAML or JSON) < ``KEY=VALUE`` overrides with dotted keys.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tprog.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    size: int = Field(20_000, ge=3, description="distinct sequences drawn (before splitting)")
    min_length: int = Field(
        1, ge=1, description="shortest content length (tokens between specials)"
    )
    max_length: int = Field(8, ge=2, description="longest input, specials included; sets n_ctx")
    vocab_size: int = Field(8, ge=3, description="input vocabulary size, specials included")
    balance_lengths: bool = Field(
        False,
        description="repeat training examples so that every input length has about the same "
        "number (val and test stay as drawn); not part of the paper protocol",
    )


class ModelConfig(_Section):
    kind: Literal["program", "standard"] = Field(
        "program",
        description="program: a Transformer Program, decompiled after training; standard: the "
        "ordinary Transformer baseline (its settings are standard.*; the model.* keys other "
        "than n_layers and the train.* keys other than checkpoint_every and device do not "
        "apply to it)",
    )
    n_layers: int = Field(3, ge=1, description="layers, of either kind of model")
    n_heads_cat: int = Field(4, ge=0)
    n_heads_num: int = Field(4, ge=0)
    n_mlps_cat: int = Field(2, ge=0)
    n_mlps_num: int = Field(2, ge=0)
    d_mlp: int = Field(64, ge=1, description="hidden width of every MLP")
    d_var: int | None = Field(
        None, ge=2, description="cardinality k of categorical variables; default max(vocab, n_ctx)"
    )


class TrainConfig(_Section):
    epochs: int = Field(250, ge=1, description="program runs (a standard run: standard.epochs)")
    batch_size: int = Field(
        512, ge=1, description="program runs (a standard run: standard.batch_size)"
    )
    lr: float = Field(0.05, gt=0, description="program runs (a standard run: standard.lr)")
    tau_start: float = Field(3.0, gt=0, description="Gumbel temperature at the first step")
    tau_end: float = Field(0.01, gt=0, description="Gumbel temperature at the last step")
    eval_every: int = Field(1, ge=1, description="evaluate the hard model on val every N epochs")
    checkpoint_every: int = Field(
        10, ge=1, description="write a resumable checkpoint every N epochs"
    )
    device: Literal["cpu", "cuda"] = "cpu"
    prune: bool = Field(
        False,
        description="after training, remove heads and MLPs one at a time while val accuracy "
        "stays within train.prune_tolerance of the trained model's (see tprog.prune)",
    )
    prune_epochs: int = Field(
        3, ge=0, description="epochs of fine-tuning after each removal (0: remove for free only)"
    )
    prune_lr: float = Field(0.01, gt=0, description="learning rate of that fine-tuning")
    prune_tau: float = Field(
        0.1, gt=0, description="temperature that fine-tuning anneals from to tau_end"
    )
    prune_noise: bool = Field(
        True,
        description="Gumbel noise in that fine-tuning, as in training; false: each choice is the "
        "plain softmax at the fine-tuning's temperature (see train.refine_noise)",
    )
    prune_straight_through: bool = Field(
        False,
        description="that fine-tuning takes every choice's argmax going forward and its softmax "
        "at the fine-tuning's temperature going back (see train.refine_straight_through)",
    )
    prune_counterexamples: bool = Field(
        False,
        description="that fine-tuning also trains on train.refine_repeat copies of every input "
        "of the domain the model got wrong before one of its epochs, and stops once the removal "
        "is within tolerance; needs train.prune_domain",
    )
    prune_tolerance: float = Field(
        0.0, ge=0, le=1, description="val accuracy a removal may cost (a fraction, 0.001 = 0.1%)"
    )
    prune_patience: int = Field(
        0,
        ge=0,
        description="stop pruning once this many removals in a row were refused; the modules "
        "not yet tried stay (0: try every module)",
    )
    prune_domain: bool = Field(
        False,
        description="also keep a removal only while the hard model's accuracy on the task's "
        "domain (the inputs tprog verify checks) stays within train.prune_tolerance of the "
        "trained model's; the domain holds val and test inputs, so this needs "
        "train.refine_holdout=false",
    )
    refine: int = Field(
        0, ge=0, description="rounds of counterexample-guided refinement after training"
    )
    refine_epochs: int = Field(25, ge=1, description="epochs of training per refinement round")
    refine_lr: float = Field(
        0.005, gt=0, description="learning rate of the refinement rounds (fine-tuning)"
    )
    refine_tau: float | None = Field(
        None,
        gt=0,
        description="temperature each refinement round anneals from to tau_end; default tau_end",
    )
    refine_repeat: int = Field(
        10, ge=1, description="copies of each counterexample added to the training split"
    )
    refine_holdout: bool = Field(
        True,
        description="never train on val/test inputs, so that test accuracy stays held out",
    )
    refine_inherit: bool = Field(
        True,
        description="in a run continued from a refined one (tprog continue), also train on the "
        "counterexamples of every earlier run of the chain",
    )
    refine_noise: bool = Field(
        True,
        description="Gumbel noise in refinement rounds, as in training; false: each choice is "
        "the plain softmax at the round's temperature, a relaxation of the hard model itself",
    )
    refine_straight_through: bool = Field(
        False,
        description="refinement rounds take every choice's argmax going forward and its softmax "
        "at the round's temperature going back (straight-through): with train.refine_noise=false "
        "they train the program itself, with gradients that reach its discrete choices",
    )
    refit_readout: bool = Field(
        False,
        description="after pruning and refinement, refit the classifier on every input of the "
        "task's domain by linear programming: right wherever the program's variables tell the "
        "labels apart (tprog.readout); needs an enumerable domain and train.refine_holdout=false",
    )
    refit_edits: int = Field(
        0,
        ge=0,
        description="after the classifier's refit, at most this many single edits of a head's "
        "predicate (one query value's key), each chosen by search on the domain and followed by "
        "another refit, while inputs stay wrong (tprog.repair); needs train.refit_readout",
    )
    refit_candidates: int = Field(
        4,
        ge=1,
        description="edits (or removals) whose refit each step of train.refit_edits (or "
        "train.refit_removals) tries, best scored first",
    )
    refit_removals: int = Field(
        0,
        ge=0,
        description="after the classifier's refit and its edits, at most this many heads or MLPs "
        "removed, one at a time, each kept only if the program (its classifier refit when "
        "needed) leaves no more inputs of the domain wrong (tprog.removal); needs "
        "train.refit_readout",
    )


class StandardConfig(_Section):
    """The standard-Transformer baseline (``model.kind=standard``), with the paper's settings.

    Its layers are ``model.n_layers``, so the paper's grid (layers {2, 3} x heads {4, 8}) is
    ``model.n_layers`` x ``standard.n_heads``.
    """

    d_model: int = Field(256, ge=1, description="residual stream width (the paper's hidden 256)")
    n_heads: int = Field(
        4, ge=1, description="attention heads per layer, in all; must divide standard.d_model"
    )
    d_mlp: int = Field(
        256,
        ge=1,
        description="MLP hidden width; the paper states a single hidden size, 256 (its code "
        "takes the MLP width from a separate flag), read here as both widths",
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout rate (the paper's code defaults to 0 on RASP)"
    )
    lr: float = Field(3e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(50, ge=1)
    epochs: int = Field(
        100, ge=1, description="epochs trained; the best validation epoch's weights are kept"
    )


class RunConfig(_Section):
    task: str
    seed: int = Field(0, ge=0)
    task_module: str | None = Field(
        None, description="module or .py file that registers the task (user-defined tasks)"
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    standard: StandardConfig = StandardConfig()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


_SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "standard": StandardConfig,
}


def known_keys() -> list[str]:
    """Every dotted key a user may set."""
    keys = [k for k in RunConfig.model_fields if k not in _SECTIONS]
    for section, model in _SECTIONS.items():
        keys += [f"{section}.{k}" for k in model.model_fields]
    return keys


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    if key not in known_keys():
        close = difflib.get_close_matches(key, known_keys(), n=1)
        hint = (
            f"; did you mean {close[0]!r}?"
            if close
            else f"; known keys: {', '.join(known_keys())}."
        )
        raise ConfigError(f"unknown config key {key!r}{hint}")
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["model.n_layers=2", ...]`` -> ``{"model.n_layers": 2}``; values are read as YAML
    scalars, so ``2`` is an int, ``0.05`` a float and ``null`` None."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form KEY=VALUE.")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted in _SECTIONS:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def load_config_file(path: Path) -> dict[str, Any]:
    """A YAML/JSON mapping (nested sections or dotted keys) as flat dotted overrides."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML or JSON.") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of config keys.")
    return _flatten(data)


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    if message.startswith("Input should be"):  # pydantic's phrasing, reworded to follow a key
        message = "must be" + message.removeprefix("Input should be")
    return f"config key {key!r} {message[0].lower()}{message[1:]} (got {error.get('input')!r})."


def build_config(task: str, layers: Sequence[Mapping[str, Any]]) -> RunConfig:
    """Validate ``task`` plus flat dotted-key layers (applied in order) into a `RunConfig`."""
    tree: dict[str, Any] = {"task": task}
    for layer in layers:
        for key, value in layer.items():
            _set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from exc


def post_training_keys() -> list[str]:
    """The keys of the stages after training (pruning, refinement, the classifier's refit and
    the predicate edits and module removals after it): changing them leaves the trained model
    as it is."""
    stages = ("prune", "refine", "refit")
    return [f"train.{key}" for key in TrainConfig.model_fields if key.startswith(stages)]


def with_post_training(config: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """``config`` with ``overrides`` applied, which may only set `post_training_keys`."""
    for key in overrides:  # an unknown key is refused by build_config, with a suggestion
        if key in known_keys() and key not in post_training_keys():
            raise ConfigError(
                f"config key {key!r} would change the trained model; only what comes after "
                f"training may change here: {', '.join(post_training_keys())}."
            )
    return build_config(config.task, [_settings(config), overrides])


def without_post_training(config: RunConfig) -> RunConfig:
    """``config`` with every `post_training_keys` key at its default: the stages undone."""
    return build_config(config.task, [_settings(config, drop=post_training_keys())])


def _settings(config: RunConfig, drop: Sequence[str] = ()) -> dict[str, Any]:
    """``config`` as flat dotted keys for `build_config`: all but the task and ``drop``."""
    tree = _flatten(config.model_dump(mode="json"))
    return {key: value for key, value in tree.items() if key != "task" and key not in drop}


def check_feasible(config: RunConfig, vocab_size: int, n_labels: int) -> int:
    """Reject configurations that cannot work; returns the resolved ``d_var``."""
    data, model = config.data, config.model
    d_var = model.d_var if model.d_var is not None else max(vocab_size, data.max_length)
    if d_var < vocab_size:
        raise ConfigError(
            f"model.d_var={d_var} is smaller than the vocabulary ({vocab_size} tokens); "
            "one-hot token embeddings need d_var >= vocabulary size."
        )
    if d_var < data.max_length:
        raise ConfigError(
            f"model.d_var={d_var} is smaller than the context ({data.max_length} positions); "
            "one-hot position embeddings need d_var >= data.max_length."
        )
    if model.kind == "standard":
        _check_standard(config.standard)
    elif model.n_heads_cat + model.n_heads_num + model.n_mlps_cat + model.n_mlps_num == 0:
        raise ConfigError("the model has no heads and no MLPs: set at least one of model.n_*.")
    if n_labels < 1:
        raise ConfigError("the task has no output labels.")
    if config.train.tau_end > config.train.tau_start:
        raise ConfigError("train.tau_end must not exceed train.tau_start (the schedule anneals).")
    if config.train.prune and config.train.tau_end > config.train.prune_tau:
        raise ConfigError("train.tau_end must not exceed train.prune_tau (fine-tuning anneals).")
    if config.train.prune_domain and not config.train.prune:
        raise ConfigError("train.prune_domain guards pruning: it needs train.prune=true.")
    if config.train.prune_counterexamples and not config.train.prune_domain:
        raise ConfigError(
            "train.prune_counterexamples trains on the inputs of the domain a removal gets "
            "wrong: it needs train.prune_domain=true."
        )
    if config.train.prune_domain and config.train.refine_holdout:
        raise ConfigError(
            "train.prune_domain judges removals on the task's whole domain, val and test inputs "
            "included, so test accuracy is not held out: set train.refine_holdout=false to say so."
        )
    if config.train.refit_readout and config.train.refine_holdout:
        raise ConfigError(
            "train.refit_readout fits the classifier on the task's whole domain, val and test "
            "inputs included, so test accuracy is not held out: set train.refine_holdout=false "
            "to say so."
        )
    for key, step in (("refit_edits", "edit"), ("refit_removals", "removal")):
        if getattr(config.train, key) and not config.train.refit_readout:
            raise ConfigError(
                f"train.{key} refits the classifier after each {step}: it needs "
                "train.refit_readout=true."
            )
    refine_tau = config.train.refine_tau
    if config.train.refine and refine_tau is not None and config.train.tau_end > refine_tau:
        raise ConfigError("train.tau_end must not exceed train.refine_tau (rounds anneal too).")
    return d_var


def _check_standard(standard: StandardConfig) -> None:
    if standard.d_model % standard.n_heads:
        raise ConfigError(
            f"standard.d_model={standard.d_model} is not divisible by "
            f"standard.n_heads={standard.n_heads}; every head needs the same width."
        )

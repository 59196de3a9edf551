"""The run directory: atomic writes, and loading that fails with one clear sentence.

``runs/<name>/``: run.json (format version), config.json (resolved), vocab.json, checkpoint.pt,
model.pt, metrics.jsonl, timing.jsonl, results.json, program.json, program.py (+ its weights
and the runtime it loads, tprog_runtime.py);
continued_from.json in a run that `tprog continue` started from a pruned or refined run.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from tprog import __version__
from tprog.config import ModelConfig, RunConfig
from tprog.errors import RunDirError
from tprog.model.layout import Layout
from tprog.model.program import Shape, TransformerProgram
from tprog.tasks.registry import Task, get_task, import_task_module
from tprog.vocab import Vocab

RUN_FORMAT_VERSION = 1

RUN = "run.json"  # format version and provenance of the directory itself
CONFIG, VOCAB, MODEL, METRICS, RESULTS = (
    "config.json",
    "vocab.json",
    "model.pt",
    "metrics.jsonl",
    "results.json",
)
PROGRAM_JSON, PROGRAM_PY = "program.json", "program.py"
TIMING = "timing.jsonl"  # seconds per epoch: kept out of metrics.jsonl, which is deterministic
# What a continued run's model went through before it (see tprog.pipeline.continue_run).
LINEAGE = "continued_from.json"
# The modules removed after the classifier's refit (see tprog.removal); they stay removed.
REMOVAL = "removal.json"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half.

    A failure (full disk, no permission) leaves the previous file untouched and is reported
    as one sentence naming the file.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}.") from None
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink(missing_ok=True)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, oldest first (none if it does not exist)."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is corrupt (not a UTF-8 text file).") from None
    except OSError as exc:  # unreadable is not corrupt: say which, as write_atomic does
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}.") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            # A log is a run's history; guessing past a bad line could replay a stage wrongly.
            raise RunDirError(f"{path} is corrupt: line {number} is not a JSON record.")
        records.append(record)
    return records


def keep_log_records(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a JSON-lines log with only the records ``keep`` accepts (a resumed stage drops
    the records it is about to make again)."""
    if path.is_file():
        write_log(path, [record for record in read_log(path) if keep(record)])


def write_log(path: Path, records: list[dict[str, Any]]) -> None:
    """Write a JSON-lines log of ``records`` at once (atomically), one per line as
    `read_log` reads them."""
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model(path: Path, model: TransformerProgram, config: RunConfig) -> None:
    # The task and architecture travel with the weights, so that weights copied into another
    # run directory are refused by name instead of loading as a different program.
    save_torch_file(
        path,
        {"state_dict": model.state_dict(), "task": config.task, "model": config.model.model_dump()},
    )


@dataclass(frozen=True)
class Run:
    """A loaded run directory: what is needed to rebuild its model and its data."""

    path: Path
    config: RunConfig
    task: Task
    vocab: Vocab
    labels: Vocab

    @property
    def shape(self) -> Shape:
        model = self.config.model
        layout = Layout(
            model.n_layers, model.n_heads_cat, model.n_heads_num, model.n_mlps_cat, model.n_mlps_num
        )
        assert model.d_var is not None, "a saved config always has its resolved d_var"
        return Shape(
            layout,
            model.d_var,
            self.config.data.max_length,
            model.d_mlp,
            len(self.labels),
            self.task.causal,
        )

    def new_model(self, generator: torch.Generator | None = None) -> TransformerProgram:
        generator = generator or torch.Generator().manual_seed(self.config.seed)
        masked = [label == "<pad>" for label in self.labels.tokens]
        return TransformerProgram(self.shape, masked, generator)

    def load_model(self) -> TransformerProgram:
        require_program_run(self.config, self.path)
        path = self.path / MODEL
        if not path.is_file():
            raise RunDirError(f"{path} is missing: the run has no trained model.")
        blob = load_torch_file(path, "state_dict")
        if blob.get("task") != self.config.task:
            raise RunDirError(
                f"{path} holds a model of task {blob.get('task')!r}, but {self.path / CONFIG} "
                f"is a run of task {self.config.task!r}."
            )
        if not _same_architecture(blob.get("model"), self.config.model):
            raise RunDirError(
                f"{path} does not match the architecture in {self.path / CONFIG} "
                f"(it was saved with model settings {blob.get('model')})."
            )
        model = self.new_model()
        load_state(model, blob["state_dict"], path, self.path)
        model.eval()
        return model


def _same_architecture(saved: object, model: ModelConfig) -> bool:
    """Whether weights saved with model settings ``saved`` fit ``model``; settings added to
    tprog since they were saved take their defaults, so older runs still load."""
    try:
        return ModelConfig.model_validate(saved) == model
    except ValidationError:
        return False


def load_state(model: torch.nn.Module, state: dict, path: Path, run_dir: Path) -> None:
    """Load weights, naming the file and the architecture they do not fit when they differ."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise RunDirError(
            f"{path} does not match the architecture in {run_dir / CONFIG} ({first})."
        ) from None


def load_torch_file(path: Path, key: str) -> dict[str, Any]:
    """A tprog torch file (weights only), checked to hold ``key`` and this format version."""
    if not path.is_file():
        raise RunDirError(f"{path} is missing.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here; all mean "unreadable"
        raise RunDirError(
            f"{path} is not a readable tprog checkpoint ({type(exc).__name__})."
        ) from None
    if not isinstance(blob, dict) or key not in blob:
        raise RunDirError(f"{path} is not a tprog checkpoint (no {key} inside).")
    if blob.get("format_version") != RUN_FORMAT_VERSION:
        raise RunDirError(
            f"{path} has checkpoint format {blob.get('format_version')!r}; "
            f"this tprog reads format {RUN_FORMAT_VERSION}."
        )
    return blob


def save_torch_file(path: Path, blob: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": RUN_FORMAT_VERSION, **blob}, buffer)
    write_atomic(path, buffer.getvalue())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: is {path.parent} a tprog run directory?") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RunDirError(f"{path} is corrupt (not valid JSON).") from None
    except OSError as exc:  # unreadable is not corrupt (as in read_log)
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}.") from None


def read_json_if_present(path: Path) -> Any:
    """`read_json` of ``path``, or None where there is no such file (a stage that did not run)."""
    return read_json(path) if path.is_file() else None


def finish_stage(
    run: Run, name: str, record: dict[str, Any], model: TransformerProgram | None, started: float
) -> dict[str, Any]:
    """End a stage after training: save ``model`` as model.pt when the stage changed it (not
    None), then write ``record``, with the seconds since ``started`` (`time.perf_counter`), to
    ``name`` in the run directory, last: a resumed run that finds it skips the stage."""
    if model is not None:
        save_model(run.path / MODEL, model, run.config)
    record["seconds"] = round(time.perf_counter() - started, 1)
    write_json(run.path / name, record)
    return record


def read_lineage(path: Path) -> dict[str, Any] | None:
    """The record of the pruned or refined run that the run in ``path`` continues (None when
    its model is its own training's)."""
    file = Path(path) / LINEAGE
    if not file.is_file():
        return None
    lineage = read_json(file)
    if not isinstance(lineage, dict) or not isinstance(lineage.get("removed"), list):
        raise RunDirError(f"{file} is corrupt (expected the record of the run continued).")
    return lineage


def mark_run_dir(path: Path, task: str) -> None:
    info = {"format_version": RUN_FORMAT_VERSION, "task": task, "tprog_version": __version__}
    write_json(path / RUN, info)


def load_config(path: Path) -> RunConfig:
    """The resolved config of a run directory (importing its task module, if any)."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {str(path)!r} does not exist.")
    if not (path / RUN).is_file():
        raise RunDirError(f"{path} is not a tprog run directory (it has no {RUN}).")
    info = read_json(path / RUN)
    version = info.get("format_version") if isinstance(info, dict) else None
    if version != RUN_FORMAT_VERSION:
        raise RunDirError(
            f"{path / RUN} has run format {version!r}; "
            f"this tprog reads format {RUN_FORMAT_VERSION}."
        )
    try:
        config = RunConfig.model_validate(read_json(path / CONFIG))
    except ValidationError as exc:
        raise RunDirError(
            f"{path / CONFIG} is not a valid tprog config ({exc.errors()[0]['msg']})."
        ) from None
    if config.task_module:
        import_task_module(config.task_module)
    return config


def load_run(path: Path) -> Run:
    """A Transformer Program run (a standard-Transformer run is refused: it has no program)."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {str(path)!r} does not exist.")
    config = load_config(path)
    require_program_run(config, path)
    vocab, labels = load_vocab(path)
    return Run(path, config, get_task(config.task), vocab, labels)


def load_vocab(path: Path) -> tuple[Vocab, Vocab]:
    """A run directory's input vocabulary and target labels."""
    vocab_raw = read_json(Path(path) / VOCAB)
    try:
        return Vocab(tuple(vocab_raw["tokens"])), Vocab(tuple(vocab_raw["labels"]))
    except (KeyError, TypeError, ValueError):
        raise RunDirError(
            f"{Path(path) / VOCAB} is corrupt (expected tokens and labels lists)."
        ) from None


def require_program_run(config: RunConfig, path: Path) -> None:
    """Refuse, in one sentence, a standard-Transformer baseline run where a program is needed."""
    if config.model.kind == "standard":
        raise RunDirError(f"{path} is a standard Transformer run; it has no program.")

"""A task defined by a user in their own file, trained and decompiled with the same CLI."""

import json
import textwrap
from pathlib import Path

from tests.test_cli import tprog

USER_TASK = textwrap.dedent(
    """
    from tprog.tasks import register_task

    def generate(rng, data):
        n = int(rng.integers(1, data.max_length))
        xs = [str(int(v)) for v in rng.integers(0, 3, n)]
        return ["<s>", *xs], ["<pad>", *[str(xs.count(x) % 2) for x in xs]]

    register_task(
        "parity_count", generate, input_tokens=["<s>", "0", "1", "2"], labels=["0", "1"],
        defaults={"model.n_layers": 1, "data.vocab_size": 5, "data.max_length": 6},
    )
    """
)


def test_user_task_trains_decompiles_and_evaluates(tmp_path: Path) -> None:
    module = tmp_path / "my_tasks.py"
    module.write_text(USER_TASK)
    out = tmp_path / "run"
    args = ["data.size=200", "train.epochs=2", "model.d_mlp=8", "--quiet"]
    trained = tprog("train", "parity_count", "--import", str(module), "--out", str(out), *args)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((out / "results.json").read_text())["agreement"] == {
        "unsimplified_ir": 1.0,
        "ir": 1.0,
        "code": 1.0,
    }
    # Fresh processes find the task again through the recorded task module.
    assert tprog("decompile", str(out)).returncode == 0
    evaluated = tprog("eval", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["agreement"] == 1.0
    listed = tprog("tasks", "--import", str(module))
    assert "parity_count:" in listed.stdout


def test_unknown_task_module_is_a_clear_error(tmp_path: Path) -> None:
    result = tprog("train", "x", "--import", str(tmp_path / "missing.py"), "--quiet")
    assert result.returncode == 2 and "missing.py" in result.stderr
    assert "Traceback" not in result.stderr

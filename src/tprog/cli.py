"""The ``tprog`` command: thin subcommands, each calling one library function.

Errors a user can cause (`TprogError`) are printed as one sentence with exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
import numpy as np

from tprog.config import load_config_file, parse_overrides
from tprog.errors import TprogError
from tprog.pipeline import (
    continue_run,
    decompile_dir,
    evaluate_dir,
    resume_and_decompile,
    run_tokens,
    train_and_decompile,
    verify_dir,
)
from tprog.prune import describe_change, describe_removals
from tprog.sweep import BACKENDS, describe_sweep, run_sweep
from tprog.tasks.registry import all_tasks, get_task, import_task_module, task_config
from tprog.verify import DEFAULT_MAX_INPUTS, DEFAULT_SAMPLE, VERIFY_JSON, VerifyReport
from tprog.vocab import PAD

IMPORT_HELP = "Python module or .py file that registers extra tasks (repeatable)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tprog")
def cli() -> None:
    """Learn Transformer Programs and decompile them into faithful Python programs."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")


@cli.command()
@click.option("--import", "imports", multiple=True, help=IMPORT_HELP)
def tasks(imports: tuple[str, ...]) -> None:
    """List the tasks, each with a worked example."""
    for spec in imports:
        import_task_module(spec)
    for task in all_tasks():
        config = task_config(task.name)
        inputs, targets = task.generate(np.random.default_rng(0), config.data)
        click.echo(f"{task.name}: {task.summary}")
        click.echo(f"    input : {' '.join(inputs)}")
        click.echo(f"    target: {' '.join(targets)}")


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("task_name", metavar="TASK", required=False)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML/JSON config.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory [runs/TASK-sSEED].")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--import", "imports", multiple=True, help=IMPORT_HELP)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(path_type=Path),
    help="Continue the interrupted run in this directory, from its last checkpoint.",
)
def train(task_name, overrides, config_file, out, overwrite, imports, quiet, resume_dir) -> None:
    """Train TASK, decompile it, and check the program on every example."""
    for spec in imports:
        import_task_module(spec)
    if task_name is not None and "=" in task_name:  # `train --resume RUN k=v`: no TASK given
        task_name, overrides = None, (task_name, *overrides)
    if resume_dir is not None:
        if overrides or config_file or out or overwrite:
            raise TprogError(
                "--resume continues a run with the configuration it started with; "
                "drop KEY=VALUE, --config, --out and --overwrite."
            )
        outcome = resume_and_decompile(resume_dir, task=task_name, progress=not quiet)
        _print_results(outcome.results, outcome.program_path)
        click.echo(str(resume_dir))
        return
    if task_name is None:
        raise click.UsageError("Missing argument 'TASK' (or give --resume RUN_DIR).")
    task = get_task(task_name)
    layers = []
    if config_file is not None:
        layers.append(load_config_file(config_file))
    layers.append(parse_overrides(overrides))
    if imports:
        # Recorded so that decompile/eval can re-import the task that defines the data.
        spec = imports[-1]
        layers.append({"task_module": str(Path(spec).resolve()) if spec.endswith(".py") else spec})
    config = task_config(task.name, *layers)
    out = out or Path("runs") / f"{task.name}-s{config.seed}"
    outcome = train_and_decompile(config, out, overwrite=overwrite, progress=not quiet)
    _print_results(outcome.results, outcome.program_path)
    click.echo(str(out))


def _print_results(results: dict, program_path: Path) -> None:
    click.echo(
        f"test accuracy {results['test_accuracy']:.4f} "
        f"(val {results['val_accuracy']:.4f}, train {results['train_accuracy']:.4f})"
    )
    if results.get("model") == "standard":  # the baseline: no program to report on
        click.echo(
            "standard Transformer, weights of the best validation epoch "
            f"({results['best_epoch']} of {results['epochs']})"
        )
        return
    agreement = results["agreement"]
    click.echo(
        f"faithfulness: program == hard model on {agreement['ir']:.6f} (IR) and "
        f"{agreement['code']:.6f} (code) of {results['n_examples_checked']} examples"
    )
    checked = results["verification"]
    click.echo(
        f"{checked['mode']} ({checked['n_inputs']:,} inputs): token accuracy "
        f"{checked['token_accuracy']:.4f}, whole-sequence accuracy "
        f"{checked['sequence_accuracy']:.4f}"
    )
    if results.get("pruning"):
        pruning = results["pruning"]
        click.echo(f"pruning: {describe_removals(pruning)}; {describe_change(pruning)}")
    if results.get("refinement"):
        rounds, kept = results["refinement"]["rounds"], results["refinement"]["kept_round"]
        wrong = " -> ".join(str(record["n_wrong"]) for record in rounds)
        click.echo(f"refinement: inputs wrong after each round {wrong}; kept round {kept}")
    if results.get("readout"):
        readout = results["readout"]
        kept = "kept" if readout["kept"] else "not kept"
        click.echo(
            f"classifier refit: inputs wrong {readout['wrong_before']} -> "
            f"{readout['wrong_after']} ({kept}; {readout['n_conflicts']} conflicts)"
        )
    if results.get("repair"):
        repair = results["repair"]
        click.echo(
            f"predicate edits: {len(repair['edits'])} kept of {len(repair['tried'])} tried; "
            f"inputs wrong {repair['wrong_before']} -> {repair['wrong_after']}"
        )
    if results.get("removal"):
        removal = results["removal"]
        click.echo(
            f"removals after the refit: {len(removal['removed'])} kept of "
            f"{len(removal['tried'])} tried ({', '.join(removal['removed']) or 'none'}); "
            f"inputs wrong {removal['wrong_before']} -> {removal['wrong_after']}"
        )
    lines = results["size"]["code_lines"]
    click.echo(
        f"program: {program_path} ({lines['simplified']} code lines, "
        f"{lines.get('learned', '?')} of them its own; {lines['unsimplified']} before "
        "simplification)"
    )


@cli.command(name="continue")
@click.argument("source", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The new run.")
@click.option("--overwrite", is_flag=True, help="Replace an existing directory at --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def continue_(source: Path, overrides, out: Path, overwrite: bool, quiet: bool) -> None:
    """Prune, refine or refit a finished run as a new run: KEY=VALUE sets train.prune*,
    train.refine* and train.refit* (e.g. train.prune=true); RUN_DIR, which may itself be
    pruned or refined, stays as it is."""
    outcome = continue_run(
        source, out, parse_overrides(overrides), overwrite=overwrite, progress=not quiet
    )
    _print_results(outcome.results, outcome.program_path)
    click.echo(str(out))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def decompile(run_dir: Path) -> None:
    """(Re)write RUN_DIR's program.json and program.py and check them on every example."""
    outcome = decompile_dir(run_dir)
    _print_results(outcome.results, outcome.program_path)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("target", type=click.Path(path_type=Path))
@click.argument("tokens", nargs=-1, required=True)
def run(target: Path, tokens: tuple[str, ...]) -> None:
    """Run a program (a run directory or a program.py) on TOKENS; prints one label per token."""
    click.echo(" ".join(run_tokens(target, tokens)))


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True
)
def eval_(run_dir: Path, split: str) -> None:
    """Accuracy of RUN_DIR's hard model and program on one split."""
    click.echo(json.dumps(evaluate_dir(run_dir, split), indent=2))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--max-inputs",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_INPUTS,
    show_default=True,
    help="Check every input when the task's domain has at most this many; else sample.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=DEFAULT_SAMPLE,
    show_default=True,
    help="Inputs drawn when the domain is larger, or when the task declares none.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def verify(run_dir: Path, max_inputs: int, sample: int, seed: int) -> None:
    """Check RUN_DIR's program against its task's targets on every input (or a sample)."""
    report = verify_dir(run_dir, max_inputs=max_inputs, sample=sample, seed=seed)
    _print_report(report)
    click.echo(f"report: {Path(run_dir) / VERIFY_JSON}")


def _print_report(report: VerifyReport) -> None:
    """What was checked, how well, and the shortest failures, each under its input."""
    seed = f" (seed {report.seed})" if report.seed is not None else ""
    size = f" of {report.domain_size}" if report.domain_size is not None else ""
    click.echo(f"{report.task}: {report.mode}{seed}, {report.n_inputs}{size} inputs checked")
    click.echo(
        f"token accuracy {report.token_accuracy:.6f}, sequence accuracy "
        f"{report.sequence_accuracy:.6f} ({report.n_wrong} of {report.n_inputs} inputs wrong)"
    )
    if report.n_wrong:
        counts = (f"{c.length}: {c.n_wrong}/{c.n_inputs}" for c in report.by_length)
        click.echo(f"wrong inputs by input length (tokens): {', '.join(counts)}")
    if report.counterexamples:
        click.echo("shortest counterexamples (^: a wrong label; <pad> targets are not scored):")
    for case in report.counterexamples:
        marks = tuple(
            "^" if want != PAD and got != want else ""
            for want, got in zip(case.expected, case.predicted, strict=True)
        )
        _print_columns(
            {
                "input": case.input,
                "expected": case.expected,
                "predicted": case.predicted,
                "wrong": marks,
            }
        )
    for check in report.references:
        agreement = "every input" if check.agreement == 1.0 else f"{check.agreement:.6f} of inputs"
        click.echo(f"{check.name}: equal to the program on {agreement}")


def _print_columns(rows: dict[str, tuple[str, ...]]) -> None:
    """Token rows aligned one column per position, so that a wrong position stands out."""
    widths = [max(len(token) for token in column) for column in zip(*rows.values(), strict=True)]
    for name, row in rows.items():
        cells = " ".join(token.ljust(width) for token, width in zip(row, widths, strict=True))
        click.echo(f"  {name:<10}{cells}".rstrip())


@cli.command()
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), help="Runs at once [one per CPU core].")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="local",
    show_default=True,
    help="Where runs go.",
)
@click.option("--address", help="Ray cluster address [RAY_ADDRESS, else a local Ray instance].")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [sweeps/NAME].")
@click.option("--dry-run", is_flag=True, help="List the runs and which are done; train nothing.")
def sweep(sweep_file, workers, backend, address, out, dry_run) -> None:
    """Run SWEEP_FILE's grid of runs in parallel; rerun the command to resume."""
    if dry_run:
        for line in describe_sweep(sweep_file, out):
            click.echo(line)
        return
    result = run_sweep(sweep_file, out=out, workers=workers, backend=backend, address=address)
    click.echo(f"{result.csv_path}\n{result.summary_path}")
    if result.n_failed:
        raise TprogError(
            f"{result.n_failed} of {result.n_runs} runs failed; see {result.csv_path}."
        )


def main() -> None:
    try:
        code = cli.main(standalone_mode=False)
    except TprogError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()

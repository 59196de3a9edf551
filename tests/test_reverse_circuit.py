"""Reversal at every length, written by hand as an IR program, is right on reverse's whole domain.

Three modules in the first two layers of the smallest architecture that holds them (one
categorical head per layer, one categorical MLP): a head that finds ``</s>`` and copies its
position (the length plus one, at every position), an MLP from (position, that) to the mirrored
position, and a head that copies the token there. So trained reverse programs that reverse only
particular lengths (results/refinement/) show what training finds, not what the architecture
allows.
"""

from tprog import ir
from tprog.codegen import load_program_module, write_program
from tprog.program_stats import learned_lines
from tprog.simplify import Basis, simplify
from tprog.tasks import get_task, task_config
from tprog.verify import verify_program
from tprog.vocab import encode_batch


def reverse_program(vocab: tuple[str, ...], labels: tuple[str, ...], k: int) -> ir.Program:
    end = vocab.index("</s>")
    # position i, position of </s> e -> e - i (modulo k only where i > e: padding, unscored)
    mirror = tuple(tuple((e - i) % k for e in range(k)) for i in range(k))
    silent = tuple(tuple(0.0 for _ in labels) for _ in range(k))
    # The copied token is the label; <s> and </s> land on the unscored ends (<pad> targets).
    copied = tuple(tuple(float(label == vocab[i]) for label in labels) for i in range(k))
    return ir.Program(
        task="reverse",
        vocab=vocab,
        n_ctx=k,
        d_var=k,
        causal=False,
        variables=(
            *ir.INPUT_VARIABLES,
            ir.Variable("attn_0_0", "categorical"),
            ir.Variable("mlp_0_0", "categorical"),
            ir.Variable("attn_1_0", "categorical", "token"),
        ),
        modules=(
            # every query asks for the key </s>; its position is the value
            ir.CatAttention("attn_0_0", "positions", "tokens", "positions", (end,) * k),
            ir.CatMLP("mlp_0_0", ("positions", "attn_0_0"), mirror),
            ir.CatAttention("attn_1_0", "mlp_0_0", "positions", "tokens", tuple(range(k))),
        ),
        classifier=ir.Classifier(
            labels=labels,
            masked=tuple(label == "<pad>" for label in labels),
            terms=("tokens", "positions", "attn_0_0", "mlp_0_0", "attn_1_0", "ones"),
            categorical={
                "tokens": silent,
                "positions": silent,
                "attn_0_0": silent,
                "mlp_0_0": silent,
                "attn_1_0": copied,
            },
            numerical={"ones": tuple(0.0 for _ in labels)},
        ),
    )


def reverse_on_its_domain() -> tuple[ir.Program, Basis]:
    """`reverse_program` at reverse's default configuration, and its whole input domain."""
    data = task_config("reverse").data
    task = get_task("reverse")
    vocab = ("<pad>", *task.vocab_tokens(data))
    labels = ("<pad>", *task.label_tokens(data))
    program = reverse_program(vocab, labels, max(len(vocab), data.max_length))
    rows = [row for chunk in task.input_domain(data).chunks(8192) for row in chunk]
    ids, lengths = encode_batch(rows, program.vocab, program.n_ctx, program.unk)
    return program, Basis(ids, lengths, "the whole domain", whole_domain=True)


def test_hand_written_reverse_is_right_on_every_input(tmp_path) -> None:
    program, domain = reverse_on_its_domain()
    data = task_config("reverse").data
    task = get_task("reverse")
    # Simplified on the domain, as a run's program is; one pass over the domain checks it
    # against the targets and against the program as written (as `tprog verify` does).
    simplified = simplify(program, domain)
    report = verify_program(simplified, task, data, reference_programs=[("written", program)])
    assert (report.mode, report.n_inputs, report.n_wrong) == ("whole domain", 19_530, 0)
    assert report.references[0].agreement == 1.0

    # It is a handful of lines of code, and it runs.
    path = tmp_path / "program.py"
    write_program(simplified, path)
    assert learned_lines(path.read_text(encoding="utf-8")) <= 20  # trained ones: ~190
    module = load_program_module(path)
    # (<pad>, the target at <s> and </s>, is masked: those two outputs are not scored)
    assert module.run(["<s>", "0", "1", "2", "</s>"])[1:4] == ["2", "1", "0"]

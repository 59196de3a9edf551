"""The induction-head circuit, written by hand as an IR program, solves the induction task.

A worked example of the IR, and a check that the task, the selection rule and the interpreter
agree with the paper's account: a previous-token head, then a head matching the current letter
against the previous token, whose BOS default stands for "never seen" (<unk>).
"""

from tprog import ir
from tprog.data import build_dataset
from tprog.interpret import predict_ids
from tprog.tasks import get_task, task_config


def induction_program(vocab: tuple[str, ...], labels: tuple[str, ...], k: int) -> ir.Program:
    previous = tuple([k - 1] + [q - 1 for q in range(1, k)])  # query position q -> key q - 1
    letters = {"a", "b", "c", "d"}
    # A letter matches the same letter; anything else asks for <pad>, which no key holds.
    same_letter = tuple(i if vocab[i] in letters else 0 for i in range(k))
    silent = tuple(tuple(0.0 for _ in labels) for _ in range(k))
    # The copied token names the label: a number is itself, BOS (<s>) means "not seen": <unk>.
    copied = tuple(
        tuple(float(label == (vocab[i] if vocab[i] in labels else "<unk>")) for label in labels)
        for i in range(k)
    )
    variables = ("tokens", "positions", "ones", "attn_0_0", "attn_1_0")
    return ir.Program(
        task="induction",
        vocab=vocab,
        n_ctx=k,
        d_var=k,
        causal=True,
        variables=(
            *ir.INPUT_VARIABLES,
            ir.Variable("attn_0_0", "categorical", "token"),
            ir.Variable("attn_1_0", "categorical", "token"),
        ),
        modules=(
            ir.CatAttention("attn_0_0", "positions", "positions", "tokens", previous),
            ir.CatAttention("attn_1_0", "tokens", "attn_0_0", "tokens", same_letter),
        ),
        classifier=ir.Classifier(
            labels=labels,
            masked=tuple(label == "<pad>" for label in labels),
            terms=variables,
            categorical={
                "tokens": silent,
                "positions": silent,
                "attn_0_0": silent,
                "attn_1_0": copied,
            },
            numerical={"ones": tuple(0.0 for _ in labels)},
        ),
    )


def test_hand_written_induction_circuit_is_perfect() -> None:
    config = task_config("induction", {"data.size": 2000})
    dataset = build_dataset(get_task("induction"), config)
    k = config.data.max_length
    program = induction_program(dataset.vocab.tokens, dataset.labels.tokens, k)
    for split in (dataset.train, dataset.val, dataset.test):
        predicted = predict_ids(program, split.ids, split.lengths)
        scored = split.target_ids != 0
        assert (predicted[scored] == split.target_ids[scored]).all()

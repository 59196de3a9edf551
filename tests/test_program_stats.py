from tests.test_induction_circuit import induction_program
from tprog.program_stats import code_lines, module_counts

SOURCE = '''"""A module docstring
over two lines."""

import json  # a comment after code


def f(x):
    """A docstring."""
    # only a comment
    return {
        "a": 1,
    }
'''


def test_code_lines_skip_blanks_comments_and_docstrings() -> None:
    # import, def, return {, "a": 1, }
    assert code_lines(SOURCE) == 5


def test_module_counts_list_every_kind() -> None:
    program = induction_program(("<pad>", "<s>", "a"), ("<pad>", "a"), 3)
    assert module_counts(program) == {
        "categorical heads": 2,
        "numerical heads": 0,
        "categorical MLPs": 0,
        "numerical MLPs": 0,
    }

from tests.test_induction_circuit import induction_program
from tprog.codegen import program_to_python
from tprog.codegen_template import RUNTIME_BANNER, RUNTIME_SOURCE
from tprog.program_stats import code_lines, learned_lines, module_counts

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


def test_learned_lines_count_the_program_without_loading_the_runtime() -> None:
    program = induction_program(("<pad>", "<s>", "a"), ("<pad>", "a"), 3)
    source = program_to_python(program)[0]
    own = source[source.index("\ndef program(") : source.index(RUNTIME_BANNER)]
    assert learned_lines(source) == code_lines(own)
    assert own.count("def ") == 3  # program() and one predicate per head
    # The rest: two imports, and two statements that run and bind the runtime.
    assert code_lines(source) - learned_lines(source) == 4
    assert "def run(" not in source and "def select(" not in source
    assert "def run(" in RUNTIME_SOURCE and "def select(" in RUNTIME_SOURCE

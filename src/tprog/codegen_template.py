"""The fixed part of every generated program module (see `tprog.codegen`).

The helpers a program calls, and its run/run_batch, are not in the module: they are the
runtime, `tprog.program_runtime`, which tprog writes beside every program as RUNTIME_FILE.
"""

from pathlib import Path

from tprog import program_runtime

# The runtime's file name beside a program, and its text: the same in every tprog program.
RUNTIME_FILE = "tprog_runtime.py"
RUNTIME_SOURCE = Path(program_runtime.__file__).read_text(encoding="utf-8")

# The names program.py takes from the runtime's bind(), in the order bind() returns them.
BOUND_NAMES = program_runtime.BOUND_NAMES

# Where the program's own part (program(), its predicates and tables) ends.
RUNTIME_BANNER = "# --- The runtime"

# The fixed part of every generated module; @NAME@ slots are filled in one pass (re.sub), so
# text placed in one slot is never searched for another.
TEMPLATE = """@DOC@

import importlib.util
from pathlib import Path

# program() comes first, then the predicates and MLP tables it calls. The helpers it uses
# (select_closest, select, aggregate, aggregate_sum, apply) are bound at the end of the file.


@PROGRAM@


@FUNCTIONS@# --- The runtime: tprog_runtime.py beside this file, the same in every tprog program.
# Its bind() gives the helpers program() calls, and run and run_batch, bound to program() and
# to this program's vocabulary, labels and classifier weights (the JSON file, read once, here).
_HERE = Path(__file__).parent
_SPEC = importlib.util.spec_from_file_location(f"{__name__}_runtime", _HERE / @RUNTIME@)
_RUNTIME = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_RUNTIME)
@BOUND@ = _RUNTIME.bind(
    program, _HERE / @WEIGHTS@
)
"""

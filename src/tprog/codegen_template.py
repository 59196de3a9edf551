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

import runpy
from pathlib import Path

# program() comes first, then the predicates and MLP tables it calls. The helpers it uses
# (select_closest, select, aggregate, aggregate_sum, apply) are bound at the end of the file.


@PROGRAM@


@FUNCTIONS@# --- The runtime: tprog_runtime.py beside this file, the same in every tprog program,
# run afresh for this one. Its bind() gives the helpers program() calls, and run and run_batch,
# bound to program() and to this program's vocabulary, labels and classifier weights: the JSON
# file beside this one whose name is this file's stem and "_weights.json", read once, here.
_BIND = runpy.run_path(str(Path(__file__).with_name(@RUNTIME@)))["bind"]
@BOUND@ = _BIND(program, __file__)
"""

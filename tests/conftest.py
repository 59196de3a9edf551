"""Every test runs with two torch threads, whatever the machine has.

The tiny training runs that tests assert on (a module pruning keeps, a round that finds
counterexamples) follow one trajectory of a chaotic optimisation, and how a reduction is split
between threads changes its float rounding and so the trajectory. Two threads is what the
suite's expectations were made with; pinning it makes a machine with more or fewer cores (or
``OMP_NUM_THREADS=1``) run the same trajectories.
"""

import torch

torch.set_num_threads(2)

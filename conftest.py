"""Repository-wide pytest setup, for the tests and the notebooks nbmake executes (their kernels
inherit this process's environment, so setting variables here is enough).

- ``ESJAX_SMOKE=1``: notebooks run in smoke mode (small budgets).
- ``XLA_FLAGS``: every program the suite compiles (in this process, in subprocesses and in the
  notebooks' kernels) skips LLVM's optimisation passes and uses XLA's legacy CPU fusion
  emitters: compiling is faster on 2 cores (the determinism tests of 10 strategies: 67 s with
  the first flag alone, 41 s with both). The HLO passes are the default ones; the machine code
  is less optimised (the suite's small shapes do not notice) and may round differently in the
  last bit, so a test compares only results computed under these same flags (or within a
  tolerance), never numbers recorded by a run with the defaults. A result that changes with
  these flags beyond rounding is a fragility of the code, not of the flags: PGPE's all-NaN
  generation moved under them until centred ranks were computed from exact integers
  (esjax/shaping.py). Flags already in ``XLA_FLAGS`` are placed after these, so the caller's
  settings win.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

os.environ.setdefault("ESJAX_SMOKE", "1")
os.environ["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

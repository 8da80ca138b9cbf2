"""Repository-wide pytest setup, for the tests and the notebooks nbmake executes (their kernels
inherit this process's environment, so setting variables here is enough).

- ``ESJAX_SMOKE=1``: notebooks run in smoke mode (small budgets).
- ``XLA_FLAGS``: every program the suite compiles (in this process, in subprocesses and in the
  notebooks' kernels) skips LLVM's optimisation passes and XLA's new CPU fusion emitters:
  compiling is 2-4x faster on 2 cores (the determinism tests of 10 strategies: 141 s -> 71 s,
  the latter on a host twice as loaded). The HLO passes are the default ones; the machine code
  is less optimised (the suite's small shapes do not notice) and elementwise functions may
  round differently in the last bit, so a test compares only results computed under these
  same flags, never numbers recorded by a run with the defaults. Flags already in
  ``XLA_FLAGS`` are placed after these, so the caller's settings win.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

os.environ.setdefault("ESJAX_SMOKE", "1")
os.environ["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

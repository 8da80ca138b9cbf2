"""Repository-wide pytest setup: notebooks executed by nbmake run in smoke mode (small budgets).

The nbmake kernels inherit this process's environment, so setting the variable here is enough.
"""

import os

os.environ.setdefault("ESJAX_SMOKE", "1")

"""Notebooks are committed without outputs and honour the smoke switch.

They are *executed* by nbmake as part of the same pytest run (``--nbmake`` in pyproject's
addopts, with ``ESJAX_SMOKE=1`` set by the root conftest), so a cell that errors fails CI.
"""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_outputs_are_stripped_and_smoke_mode_is_read(path):
    notebook = json.loads(path.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    for cell in code:
        assert cell.get("outputs", []) == [], f"{path.name}: a cell has stored outputs"
        assert cell.get("execution_count") is None, f"{path.name}: a cell has an execution count"
    source = "".join("".join(cell["source"]) for cell in code)
    assert "ESJAX_SMOKE" in source, f"{path.name} must shrink its budget when ESJAX_SMOKE=1"

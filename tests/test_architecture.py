"""The import graph runs one way: strategies → base → shaping / prng / flatten; the generation
code (loop) knows nothing of devices; the sharding code builds on it; the public drivers sit
above both. Read from the source with ``ast`` (lazy imports inside functions count too)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "esjax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module → the esjax modules it imports anywhere in its body."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[_module_name(path)] = {name for name in found if name.startswith("esjax")}
    modules = set(graph)
    return {name: {imp for imp in imports if imp in modules} for name, imports in graph.items()}


GRAPH = _imports()

# (importer prefix, modules it must never import): each a layer above the importer.
FORBIDDEN = [
    ("esjax.base", ["esjax.strategies", "esjax.loop", "esjax.driver", "esjax.distributed"]),
    ("esjax.prng", ["esjax.base", "esjax.strategies", "esjax.loop"]),
    ("esjax.shaping", ["esjax.base", "esjax.strategies", "esjax.loop"]),
    ("esjax.flatten", ["esjax.base", "esjax.strategies", "esjax.loop"]),
    (
        "esjax.strategies",
        ["esjax.loop", "esjax.driver", "esjax.distributed", "esjax.experiments", "esjax.nn"],
    ),
    ("esjax.loop", ["esjax.distributed", "esjax.driver", "esjax.experiments", "esjax.strategies"]),
    ("esjax.distributed", ["esjax.driver", "esjax.experiments", "esjax.strategies"]),
    ("esjax.lowrank", ["esjax.driver", "esjax.experiments"]),
    ("esjax.checkpoint", ["esjax.loop", "esjax.driver", "esjax.distributed", "esjax.experiments"]),
]


@pytest.mark.parametrize("importer, forbidden", FORBIDDEN, ids=[row[0] for row in FORBIDDEN])
def test_nothing_imports_upward(importer, forbidden):
    for module, imports in GRAPH.items():
        if module == importer or module.startswith(importer + "."):
            upward = {i for i in imports if any(i == f or i.startswith(f + ".") for f in forbidden)}
            assert not upward, f"{module} imports {sorted(upward)}"


def test_no_import_cycles_between_modules():
    # Packages' __init__ files re-export their children; cycles through them are not real.
    edges = {m: {i for i in imps if not i.startswith(m + ".")} for m, imps in GRAPH.items()}
    leaves = {
        m: imps for m, imps in edges.items() if not (PACKAGE / m[6:].replace(".", "/")).is_dir()
    }
    visiting, done = set(), set()

    def visit(module, path):
        if module in done or module not in leaves:
            return
        assert module not in visiting, " -> ".join([*path, module])
        visiting.add(module)
        for child in leaves[module]:
            visit(child, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in leaves:
        visit(module, [])


def test_every_module_declares_its_public_names():
    for path in PACKAGE.rglob("*.py"):
        names = {
            target.id
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        assert "__all__" in names, path
    assert (PACKAGE / "py.typed").is_file()


def test_import_esjax_stays_free_of_plotting_and_sklearn():
    code = (
        "import sys, esjax; heavy = [m for m in ('matplotlib', 'sklearn') if m in sys.modules];"
        " print(heavy); raise SystemExit(bool(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

"""The layers point one way: `pedseg` (the command) -> `simulations` -> `server`, `client` -> `flower_common`
-> `pedseg_core`.
`pedseg_core` imports nothing above it, no Flower by any means (no importlib, __import__ or runpy either) and no
argparse (the command line lives in `pedseg` and `client/cli.py`), and
`server` and `client` do not import each other, so a site installs no server code paths and the reverse."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ABOVE = {"pedseg_core": {"pedseg", "simulations", "server", "client", "flower_common", "flwr", "argparse"},
         "flower_common": {"pedseg", "simulations", "server", "client"},
         "server": {"pedseg", "simulations", "client"},
         "client": {"pedseg", "simulations", "server"},
         "simulations": {"pedseg"}}
DYNAMIC = {"importlib", "runpy", "__import__", "import_module"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import and of every dynamic-import name the file mentions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in DYNAMIC:
                found.append((node.lineno, name))
    return found


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_a_layer_imports_nothing_above_it(layer):
    forbidden = ABOVE[layer] | (DYNAMIC if layer == "pedseg_core" else set())
    wrong = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in sorted((ROOT / layer).rglob("*.py"))
             for line, name in imports_of(path) if name.split(".")[0] in forbidden]
    assert not wrong, "\n".join(wrong)


def test_importing_all_of_pedseg_core_loads_no_flower_and_nothing_above_it():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "pedseg_core").rglob("*.py"))
    probe = ("import importlib, sys\n"
             f"for m in {modules!r}: importlib.import_module(m)\n"
             "print(sorted({n.split('.')[0] for n in sys.modules} & {'flwr', 'simulations', 'server', 'client', "
             "'flower_common', 'pedseg'}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, encoding="utf-8",
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(modules) > 40  # the walk found the package


def test_the_check_sees_a_dynamic_import(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import importlib\nmod = importlib.import_module('simulations.local')\n", encoding="utf-8")
    assert {name for _, name in imports_of(sneaky)} >= {"importlib", "import_module"}

"""The production package stands without the development kit: no module of ``slurm_vgpu`` imports
``slurm_vgpu_dev`` (the dev cluster, the fake MPS daemon and CUDA client), so a site's install
never depends on, or runs, a stand-in."""
from __future__ import annotations

import ast
from pathlib import Path

import slurm_vgpu

PACKAGE = Path(slurm_vgpu.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_production_module_imports_the_development_kit():
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "slurm_vgpu_dev")
                 for p in PACKAGE.rglob("*.py")}
    assert {p: m for p, m in offenders.items() if m} == {}

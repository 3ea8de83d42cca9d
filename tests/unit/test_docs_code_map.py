"""docs/architecture.md's code map is a tree of every module of the two packages: a module added,
moved or removed without the map following fails here, naming it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LISTED_SUFFIXES = (".py", ".c", ".h")


def mapped_paths() -> set[str]:
    """The paths the tree in the 'Code map' section names, built from its indentation."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = re.search(r"## Code map.*?```\n(.*?)```", text, re.S).group(1)
    stack: list[str] = []
    paths = set()
    for line in tree.splitlines():
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip(" "))) // 2
        stack[depth:] = [name]
        paths.add("".join(stack))
    return paths


def module_paths() -> set[str]:
    """Every module and package folder git tracks in the packages (not __init__.py, not the
    migrations' versions or the templates: their folders stand for them)."""
    files = subprocess.run(["git", "ls-files", "slurm_vgpu", "slurm_vgpu_dev"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    paths = set()
    for name in files:
        path = Path(name)
        for parent in list(path.parents)[:-1]:
            paths.add(f"{parent}/")
        if path.suffix in LISTED_SUFFIXES and path.name != "__init__.py" and "migrations" not in path.parts \
                and "templates" not in path.parent.name:
            paths.add(name)
    return {p for p in paths if not any(part in ("versions", "__pycache__") for part in Path(p).parts)}


def test_the_code_map_names_every_module_and_nothing_that_is_gone():
    mapped, actual = mapped_paths(), module_paths()
    assert sorted(actual - mapped) == [], "modules the code map in docs/architecture.md misses"
    assert sorted(mapped - actual) == [], "paths the code map names that do not exist"

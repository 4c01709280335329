"""The house rules the import graph must keep: the training path never imports the reading side, and no module
but the entry point imports the CLI. Read from the source (every import, also those inside functions)."""

import ast
import re
from pathlib import Path

import pytest

from optbench import results

PACKAGE = Path(__file__).resolve().parents[1] / "optbench"
PLUGINS = PACKAGE.parent / "hydra_plugins"
# what trains: these modules and everything they import must stay clear of READING
TRAINING = ("optbench.trainer", "optbench.models", "optbench.optimizers", "optbench.data", "optbench.vectorized",
            "optbench.diagnostics", "optbench.schedules", "optbench.results.rundir", "optbench.executors")
READING = ("optbench.results.table", "optbench.results.ranking", "optbench.results.stats", "optbench.results.plots",
           "optbench.results.html", "optbench.results.profiles", "optbench.cli")
pytestmark = pytest.mark.fast


def modules() -> dict[str, Path]:
    found = {}
    for path in [*PACKAGE.rglob("*.py"), *PLUGINS.rglob("*.py")]:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict) -> set[str]:
    """The package's modules `path` imports anywhere in it; `from optbench.results import load_runs` counts as the
    submodule that name is loaded from (the package's lazy names)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            out.add(base)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    out.add(f"{base}.{alias.name}")
                elif base == "optbench.results" and alias.name in results._WHERE:
                    out.add(f"optbench.results.{results._WHERE[alias.name]}")
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def reachable(start: str, edges: dict) -> dict[str, str]:
    """module -> the module that imports it, for everything `start` imports directly or through others."""
    seen, todo = {start: ""}, [start]
    while todo:
        here = todo.pop()
        for there in edges.get(here, ()):
            if there not in seen:
                seen[there] = here
                todo.append(there)
    return seen


def test_the_training_path_never_imports_the_reading_side():
    edges = graph()
    for start in TRAINING:
        assert start in edges, f"{start} is not a module any more: update TRAINING"
        seen = reachable(start, edges)
        for bad in READING:
            assert bad not in seen, f"{start} reaches {bad} (imported by {seen.get(bad)})"


def test_no_module_imports_the_cli():
    edges = graph()
    importers = sorted(m for m, targets in edges.items() if "optbench.cli" in targets and m != "optbench.__main__")
    assert importers == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    # the rule above must be able to fail: a function-level import of the ranking is an arrow
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from optbench.results import rank\n    return rank\n")
    assert imported("optbench.mod", path, modules()) == {"optbench.results", "optbench.results.ranking"}


def unnamed_rooms(page: str) -> list[str]:
    """The package's modules and subpackages (and their modules) that the design page's layout does not name."""
    layout = page.split("## The layout", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    missing = []
    for path in sorted(PACKAGE.glob("*")):
        if path.name.startswith(("_", ".")) or path.name == "conf" or not (path.suffix == ".py" or path.is_dir()):
            continue
        if path.is_dir():
            if f"{path.name}/" not in layout:
                missing.append(f"{path.name}/")
            block = re.split(r"\n  (?=\S)", layout.split(f"{path.name}/", 1)[-1])[0]  # its lines, to the next room
            missing += [f"{path.name}/{m.stem}" for m in sorted(path.glob("[!_]*.py")) if m.stem not in block]
        elif path.name not in layout:
            missing.append(path.name)
    return missing


def test_the_design_page_names_every_room_of_the_package():
    page = (PACKAGE.parent / "docs" / "explanation" / "design.md").read_text()
    assert unnamed_rooms(page) == []
    # and the check can fail: a page without the race's line misses the race and its modules
    without_race = "\n".join(line for line in page.splitlines() if not line.startswith("  race/"))
    assert "race/" in unnamed_rooms(without_race)

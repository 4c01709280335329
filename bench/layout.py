"""The package's shape in numbers: lines, modules, the longest function and module, import arrows.

    python bench/layout.py            # optbench/ and hydra_plugins/ of this checkout
    python bench/layout.py --arrows   # also every import arrow between optbench's modules

An import arrow is one module importing another of the package (at the top or inside a function); the training
path is checked separately by tests/test_layout.py.
"""

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str) -> set[str]:
    """The optbench modules `path` imports, resolved (relative imports too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("optbench")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            if base.startswith("optbench"):
                found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrows", action="store_true", help="print every arrow")
    opts = parser.parse_args()
    files = sorted([*(ROOT / "optbench").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")])
    names = {module_name(p): p for p in files}
    lines = {p: p.read_text().count("\n") for p in files}
    functions = []
    for p in files:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                functions.append((length, f"{p.relative_to(ROOT)}:{node.lineno} {node.name}"))
    arrows = set()
    for name, p in names.items():
        for target in imports(p, name):
            while target and target not in names:  # `from optbench.x import f`: the module x
                target = target.rpartition(".")[0]
            if target and target != name:
                arrows.add((name, target))
    functions.sort(reverse=True)
    longest_module = max(files, key=lines.get)
    print(f"lines: {sum(lines.values())} in {len(files)} modules")
    print(f"longest module: {longest_module.relative_to(ROOT)} ({lines[longest_module]} lines)")
    print("longest functions: " + "; ".join(f"{where} ({n} lines)" for n, where in functions[:3]))
    print(f"functions of 80 lines or more: {sum(n >= 80 for n, _ in functions)}; modules of 700 or more: "
          f"{sum(n >= 700 for n in lines.values())}")
    print(f"import arrows between the package's modules: {len(arrows)}")
    if opts.arrows:
        for a, b in sorted(arrows):
            print(f"  {a} -> {b}")


if __name__ == "__main__":
    main()

"""The package's shape in numbers: lines, modules, the longest function and module, import arrows.

    python bench/layout.py                 # optbench/ and hydra_plugins/ of this checkout
    python bench/layout.py --arrows        # also every import arrow between optbench's modules
    python bench/layout.py --root ../old   # another checkout (e.g. `git worktree add ../old cea0a57`)

The lines are also told apart as blank, docstring, comment and code lines, so that two versions whose
docstrings or formatting differ can be compared by their code.

An import arrow is one module importing another of the package (at the top or inside a function); the training
path is checked separately by tests/test_layout.py.
"""

import argparse
import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
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


def line_classes(source: str) -> dict[str, int]:
    """How many of `source`'s lines are blank, docstrings (of a module, class or function), comments or code."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    counts = dict.fromkeys(("blank", "docstring", "comment", "code"), 0)
    for number, line in enumerate(source.split("\n")[: source.count("\n")], start=1):
        text = line.strip()
        if not text:
            counts["blank"] += 1
        elif number in docstrings:
            counts["docstring"] += 1
        else:
            counts["comment" if text.startswith("#") else "code"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrows", action="store_true", help="print every arrow")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout to measure (default: this one)")
    opts = parser.parse_args()
    root = opts.root.resolve()
    files = sorted([*(root / "optbench").rglob("*.py"), *(root / "hydra_plugins").rglob("*.py")])
    if not files:
        parser.error(f"no optbench/ or hydra_plugins/ Python files under {root}")
    names = {module_name(p, root): p for p in files}
    lines = {p: p.read_text().count("\n") for p in files}
    functions = []
    for p in files:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                functions.append((length, f"{p.relative_to(root)}:{node.lineno} {node.name}"))
    arrows = set()
    for name, p in names.items():
        for target in imports(p, name):
            while target and target not in names:  # `from optbench.x import f`: the module x
                target = target.rpartition(".")[0]
            if target and target != name:
                arrows.add((name, target))
    functions.sort(reverse=True)
    longest_module = max(files, key=lines.get)
    classes = [line_classes(p.read_text()) for p in files]
    print(f"lines: {sum(lines.values())} in {len(files)} modules: "
          + ", ".join(f"{sum(c[kind] for c in classes)} {kind}" for kind in classes[0]))
    print(f"longest module: {longest_module.relative_to(root)} ({lines[longest_module]} lines)")
    print("longest functions: " + "; ".join(f"{where} ({n} lines)" for n, where in functions[:3]))
    print(f"functions of 80 lines or more: {sum(n >= 80 for n, _ in functions)}; modules of 700 or more: "
          f"{sum(n >= 700 for n in lines.values())}")
    print(f"import arrows between the package's modules: {len(arrows)}")
    if opts.arrows:
        for a, b in sorted(arrows):
            print(f"  {a} -> {b}")


if __name__ == "__main__":
    main()

"""The package's rooms import one way: config -> data -> schedule -> model -> run -> report -> cli."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "curriculum"
ORDER = ["config", "data", "schedule", "model", "run", "search", "report", "cli"]
# Small helpers any room may use; they import no room themselves.
BASE = {"atomic", "progress_lines", "conf_path"}


def room(module: str) -> str:
    """The room of a dotted module name under curriculum (its first package, or the base helpers)."""
    part = module.split(".")[1] if module.count(".") else ""
    return "base" if part in BASE or not part else part


def imports(path: pathlib.Path) -> list[str]:
    """Every curriculum module a file imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("curriculum"):
            found += [f"{node.module}.{a.name}" if node.module == "curriculum" else node.module for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("curriculum")]
    return found


def test_no_room_imports_a_later_one():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = "curriculum." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = room(name)
        for target in imports(path):
            other = room(target)
            if own == "base" and other != "base" and own != other:
                wrong.append(f"{name} -> {target} (base helpers import no room)")
            elif own in ORDER and other in ORDER and ORDER.index(other) > ORDER.index(own):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports running against the data flow:\n" + "\n".join(wrong)


def test_every_room_says_what_it_holds():
    for name in ORDER:
        init = PACKAGE / name / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"curriculum/{name}/__init__.py has no docstring"

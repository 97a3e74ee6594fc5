"""The package keeps the shape docs/architecture.md draws: imports run down the floors only, no
module imports one that imports it back, every package's __init__ is a map of its modules, and
modules and functions stay small enough to read."""
import ast
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "connector"

# The floors of docs/architecture.md: a group may import its own modules and the groups of lower
# floors, never a group beside it or above it.
FLOORS = {
    "ground": 0, "model": 1, "ipc": 1, "supervision": 2, "feedback": 2, "service": 3, "tools": 3,
    "standalone": 4, "entry": 5,
}
GROUND = {"errors", "params", "settings", "config_files", "logs", "counters", "files", "demos", "__init__"}
ENTRY = {"cli", "lambda_function", "__main__"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
# Functions allowed to be longer, and why.
LONG_FUNCTIONS = {
    ("connector/cli.py", "build_parser"): "an argparse builder: one statement per option",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def group_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "ground"  # the package itself
    top = parts[1]
    if top in ENTRY:
        return "entry"
    if top in GROUND:
        return "ground"
    return top


def imports_of(path: Path, module: str, is_package: bool) -> Set[str]:
    """Every connector module `path` imports, at any depth (in functions, under TYPE_CHECKING)."""
    found: Set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("connector"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("connector"):
                target = node.module
            else:
                continue
            for alias in node.names:
                # `from . import clientfile` imports a module; `from .ipc import IPCHost` a name
                # of the package's __init__.
                sub = "{}.{}".format(target, alias.name)
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / sub.replace(".", "/") / "__init__.py").exists() else target)
    return found


def modules() -> Dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found[module_name(path)] = path
    return found


def graph() -> Dict[str, Set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        raw = imports_of(path, name, path.name == "__init__.py")
        edges[name] = {m for m in raw if m in known and m != name}
    return edges


def test_imports_run_down_the_floors_only():
    wrong = []
    for source, targets in graph().items():
        for target in targets:
            a, b = group_of(source), group_of(target)
            if a == b:
                continue
            if FLOORS[b] >= FLOORS[a]:
                wrong.append("{} ({}) imports {} ({})".format(source, a, target, b))
    assert not wrong, "\n".join(sorted(wrong))


def test_no_service_code_imports_the_tools():
    offenders = [s for s, targets in graph().items() for t in targets
                 if group_of(t) == "tools" and group_of(s) not in ("tools", "entry")]
    assert not offenders


def test_no_import_circle():
    edges = graph()
    state: Dict[str, int] = {}
    circles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not circles, "\n".join(circles)


@pytest.mark.parametrize("package", sorted(p.parent for p in PACKAGE.rglob("__init__.py")
                                           if p.parent.name != "demos"), ids=str)
def test_every_package_init_is_a_map_of_its_modules(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    missing = [p.stem for p in package.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__" or (p / "__init__.py").exists())
               and ":mod:`.{}`".format(p.stem) not in doc]
    assert not missing, "{}/__init__.py does not list {}".format(package.relative_to(ROOT), missing)


def test_modules_and_functions_stay_small():
    too_big = []
    for name, path in modules().items():
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        if text.count("\n") > MAX_MODULE_LINES:
            too_big.append("{}: {} lines".format(rel, text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTIONS:
                    too_big.append("{}:{}: {} lines".format(rel, node.name, length))
    assert not too_big, "\n".join(too_big)


def test_the_top_of_the_package_holds_few_modules():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 11, top
    assert {p[:-3] for p in top} <= GROUND | ENTRY


def test_only_settings_reads_the_environment():
    readers = []
    for name, path in modules().items():
        if name == "connector.settings":
            continue
        text = path.read_text()
        for needle in ("os.environ", "getenv(", "environ.get("):
            if needle in text:
                readers.append("{}: {}".format(path.relative_to(ROOT), needle))
    assert not readers, "\n".join(readers)

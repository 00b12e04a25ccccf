"""The package's shape: the rules the README's Architecture section promises, checked."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chainer"
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 300
SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE|ALTER\s+TABLE)\b"
)


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The chainer modules `name` imports at run time (TYPE_CHECKING blocks do not count)."""
    package = (
        name if name in known and any(k.startswith(name + ".") for k in known) else name.rpartition(".")[0]
    )
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of `graph` meets, as the path around it."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_import_cycles_in_the_package() -> None:
    trees = modules()
    known = set(trees)
    graph = {name: imports(name, tree, known) for name, tree in trees.items()}
    # a package's __init__ importing its own modules is not a cycle through them
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_function_or_class_is_longer_than_a_screen() -> None:
    too_long = []
    for name, tree in modules().items():
        if name.startswith("chainer.simulator"):
            continue  # the simulator imitates Kling; it is held to its own conformance tests
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if not isinstance(node, ast.ClassDef) and lines > MAX_FUNCTION_LINES:
                too_long.append(f"{name}.{node.name}: {lines} lines (function)")
            if isinstance(node, ast.ClassDef) and lines > MAX_CLASS_LINES:
                too_long.append(f"{name}.{node.name}: {lines} lines (class)")
    assert not too_long, too_long


#: Where SQL may be written: the journal (both backends) and team mode's own tables.
SQL_HOMES = {"chainer.journal", "chainer.team.database", "chainer.team.slots", "chainer.team.queue"}


def test_sql_lives_only_in_the_stores() -> None:
    found = []
    for name, tree in modules().items():
        if name in SQL_HOMES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{name}:{node.lineno}: {node.value[:60]!r}")
    assert not found, found


def test_the_checks_above_can_fail() -> None:
    """The cycle finder and the SQL pattern see what they are meant to see."""
    cyclic = {"chainer.a": ast.parse("from . import b"), "chainer.b": ast.parse("from .a import x")}
    known = set(cyclic) | {"chainer"}
    assert imports("chainer.a", cyclic["chainer.a"], known) == {"chainer.b"}
    assert imports("chainer.b", cyclic["chainer.b"], known) == {"chainer.a"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert SQL.search("SELECT kind FROM steps WHERE chain = ?")
    assert not SQL.search("select the storyboard from the folder")  # prose is not SQL


def test_the_postgresql_driver_is_loaded_only_for_team_mode() -> None:
    """Every `chainer` start imports the CLI; only a journal on a server needs psycopg."""
    import subprocess
    import sys

    probe = "import sys, chainer.cli, chainer.session, chainer.cli.status; print('psycopg' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    probe = "import sys, chainer.team.queue; print('psycopg' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"  # the probe can see it


def test_a_start_does_not_load_the_simulators_server_or_httpx_command_line() -> None:
    """Every `chainer` start pays for its imports (a resume of 200 chains: most of its
    second); the simulator's HTTP server and renderer load only where a simulator runs,
    and httpx's own command-line client (click, pygments) never; Pillow where a frame is read."""
    import subprocess
    import sys

    heavy = ("uvicorn", "starlette", "chainer.simulator.server", "chainer.simulator.state", "pygments", "PIL")
    probe = (
        "import sys, chainer.cli, chainer.session, httpx; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules), sys.modules.get('httpx._main'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[] None"
    probe = "import sys; from chainer import Simulator; print(Simulator.__name__, 'uvicorn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "Simulator True"  # named, it loads (and the probe can see it)

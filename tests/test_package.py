"""The package's house rules: imports only go down (no cycle between geoattn's modules),
and the licence that pyproject.toml declares is the one in LICENSE."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "geoattn"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _top_level_imports(path: Path) -> set[str]:
    """geoattn modules imported at module level (imports inside functions are lazy on purpose)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import frames` imports the module geoattn.frames, not geoattn itself
            submodules = [f"{module}.{alias.name}" for alias in node.names]
            targets = [s for s in submodules if s in MODULES] or [module]
        found.update(t for t in targets if t.split(".")[0] == "geoattn")
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _top_level_imports(path) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def test_graph_sees_the_known_edges():
    graph = _graph()
    assert "geoattn.contract" in graph["geoattn.chunked"]
    assert "geoattn.geometric" in graph  # the test reads the real tree


def test_no_import_cycle_between_geoattn_modules():
    graph = _graph()
    # A package's __init__ re-exports its modules; an edge back to it would close a cycle.
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_licence_file_matches_pyproject():
    declared = re.search(r'(?m)^license = "([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    text = (ROOT / "LICENSE").read_text()
    assert declared == "MIT" and text.startswith("MIT License")

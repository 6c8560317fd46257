"""The layering rule, read from the source: the core (``fedsim/``) imports no plugin package.

Every ``.py`` file of the four packages is parsed with :mod:`ast`; every ``import`` and
``from ... import`` counts, at module level or inside a function (a deferred import still ties
the core to the plugin). Plugins (``clients``, ``server``, ``strategies``) may import the core and
each other; the core reaches them only through :mod:`fedsim.plugins` (entry points and
``load_object`` references) and the registries of :mod:`fedsim.registries`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "fedsim"
PLUGINS = ("clients", "server", "strategies")
PACKAGES = (CORE, *PLUGINS)


def module_name(path: Path, root: Path = ROOT) -> str:
    """``clients/learners/base.py`` -> ``clients.learners.base`` (a package: its ``__init__``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str, bool]]:
    """``(line, module, at module level)`` of every import statement in ``path``.

    ``from a import b`` yields ``a.b`` (``b`` may be a submodule; :func:`resolve` trims it);
    relative imports are made absolute.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}", id(node) in top


def sources() -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the four packages."""
    return {
        module_name(p): p
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``target`` that is one of ``modules`` (``None``: outside them)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def upward_imports() -> list[tuple[str, int, str]]:
    """``(file, line, module)`` of every import of a plugin package from a core file."""
    found = []
    for path in sorted((ROOT / CORE).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, target, _ in imports(path):
            if target.split(".")[0] in PLUGINS:
                found.append((rel, line, target))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the four packages it imports (anywhere in the file)."""
    modules = sources()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for _, target, _ in imports(path):
            dep = resolve(target, modules)
            if dep is not None and dep != name:
                graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_core_imports_no_plugin() -> None:
    bad = [f"{rel}:{line} imports {target}" for rel, line, target in upward_imports()]
    assert not bad, "the core imports a plugin package:\n" + "\n".join(bad)


def test_no_import_cycle_spans_packages() -> None:
    crossing = [c for c in cycles(import_graph()) if len({m.split(".")[0] for m in c}) > 1]
    assert not crossing, "import cycles across packages: " + "; ".join(
        " <-> ".join(c) for c in crossing
    )


def test_the_checker_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    # an import inside a function counts, and a relative one is made absolute
    src = tmp_path / "fedsim" / "data" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text(
        "from ..engine import fast\nfrom . import partition\n"
        "def f():\n    from clients.app import app\n    import server.fal\n"
    )
    assert list(imports(src, tmp_path)) == [
        (1, "fedsim.engine.fast", True),
        (2, "fedsim.data.partition", True),
        (4, "clients.app.app", False),
        (5, "server.fal", False),
    ]


def test_cycles_are_found() -> None:
    graph = {"a.x": {"b.y"}, "b.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}, "c": {"c"}}
    assert cycles(graph) == [["a.x", "a.z", "b.y"]]


@pytest.mark.slow  # a fresh interpreter (4 s); the static import-graph tests stay default
def test_core_modules_load_no_plugin_until_a_registry_is_asked() -> None:
    # at run time too: importing the core leaves the plugin packages unimported, and validate()
    # loads them through the entry points and runs every registered check
    code = (
        "import sys\n"
        "import fedsim.config, fedsim.federation, fedsim.registries, fedsim.schema\n"
        "import fedsim.checkpoint, fedsim.records, fedsim.outputs, fedsim.data.weak_clients\n"
        f"assert not [m for m in sys.modules if m.split('.')[0] in {PLUGINS!r}], sys.modules\n"
        "from fedsim.registries import CONFIG_CHECKS, DATA_CHECKS, LOCAL\n"
        "fedsim.config.validate(fedsim.config.compose())\n"
        "print(','.join(CONFIG_CHECKS._entries), ','.join(DATA_CHECKS._entries), 'gce' in LOCAL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    checks, data_checks, has_gce = out.stdout.split("\n")[0].split(" ")
    assert {"local", "strategy", "backdoor", "fal"} <= set(checks.split(","))
    assert "attack" in data_checks.split(",") and has_gce == "True"


def test_app_references_match_pyproject() -> None:
    from fedsim.plugins import CLIENT_APP, DEFAULT_PLUGINS, SERVER_APP, load_object

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    components = project["tool"]["flwr"]["app"]["components"]
    assert (components["serverapp"], components["clientapp"]) == (SERVER_APP, CLIENT_APP)
    assert project["project"]["entry-points"]["fedsim.plugins"] == DEFAULT_PLUGINS
    from flwr.clientapp import ClientApp

    assert isinstance(load_object(CLIENT_APP), ClientApp)

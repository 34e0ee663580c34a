"""Layers without cycles: every import of ``endpoints_app`` and ``dashboard``, read with ``ast``.

The way the CLI's no-Django test reads what ``--help`` loads, this test reads the code itself, at
module level and inside functions (an import inside a function still makes a cycle; it only hides
it until the function runs). It fails when:

1. the imports form a cycle: each knot is named, with its modules and one cycle through them;
2. a module imports one from a higher layer (``LAYERS``, bottom to top; a layer may import its
   own and every lower one);
3. a module is in no layer: a new module is placed when it is written;
4. a function imports one of our modules outside the ``ENTRY_POINTS`` (process mains, the app's
   ``ready()``, the CLI's dispatch to server commands). Libraries imported late for start-up time
   (mlflow, pandas, requests) are not ours and not checked;
5. the CLI imports anything of ours but itself at module level (it starts without Django), the
   inference gateway reaches DRF or the REST API (it is a Starlette process), or the model server
   reaches Django (it runs hostile model code and must hold nothing of the control plane).

``from package import name`` counts as an import of the submodule ``package.name`` when there is
one, else of the package: the package's ``__init__`` runs first either way, but that is no edge in
the graph (every package that re-exports its submodules would otherwise be a cycle with them).
Imports under ``if TYPE_CHECKING:`` never run: they count for layers, not for cycles.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from dashboard.celery import app as celery_app
from endpoints_app import jobs, tasks  # noqa: F401  (importing tasks registers the tasks jobs name)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("endpoints_app", "dashboard")

# Bottom to top. A name stands for that module and everything under it ("package.__init__" for
# the package's own __init__ only); the longest name that matches a module places it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "contracts: pure Python or settings only, no models",
        (
            "endpoints_app",  # the package's __init__ (empty)
            "endpoints_app.errors",
            "endpoints_app.egress",
            "endpoints_app.encryption",
            "endpoints_app.redis_client",
            "endpoints_app.observability",
            "endpoints_app.access_generation",
            "endpoints_app.jobs",
            "endpoints_app.secret_references",
            "endpoints_app.auth_header",
            "endpoints_app.security_headers",
            "endpoints_app.gateway.__init__",
            "endpoints_app.gateway.providers",
            "endpoints_app.gateway.guardrails",
            "endpoints_app.gateway.ratelimit",
            "endpoints_app.gateway.lru",
            "endpoints_app.gateway.jsonbody",
            "endpoints_app.gateway.metrics",
            "endpoints_app.runtime.__init__",
            "endpoints_app.runtime.layout",
            "endpoints_app.runtime.credentials",
            "endpoints_app.runtime.autoscaler",
            "endpoints_app.runtime.sandbox",
            "endpoints_app.runtime.ray_replica",  # runs on Ray nodes: no Django
            "endpoints_app.runtime.ray_node",  # starts Ray nodes: no Django
            "dashboard.env",
            "dashboard.heap",
        ),
    ),
    ("models", ("endpoints_app.models", "endpoints_app.migrations")),
    (
        "rules: read models, decide, record",
        (
            "endpoints_app.access",
            "endpoints_app.audit",
            "endpoints_app.auth_throttle",
            "endpoints_app.validation",
            "endpoints_app.registry",
            "endpoints_app.capacity",
        ),
    ),
    ("backends: the serving substrate", ("endpoints_app.backends",)),
    (
        "domain: reads (selectors, list filters), state changes, monitoring",
        (
            "endpoints_app.selectors",
            "endpoints_app.filters",
            "endpoints_app.services",
            "endpoints_app.monitoring",
            "endpoints_app.gateway.usage",
        ),
    ),
    (
        "processes: Celery tasks, the runtime agent and model server, the inference gateway",
        (
            "endpoints_app.tasks",
            "endpoints_app.runtime.agent",
            "endpoints_app.runtime.ray_agent",
            "endpoints_app.runtime.build",
            "endpoints_app.runtime.model_server",
            "endpoints_app.gateway.app",
            "endpoints_app.gateway.external",
            "endpoints_app.gateway.payloads",
            "endpoints_app.gateway.routing",
            "endpoints_app.gateway.shadow",
            "endpoints_app.gateway.shadow_worker",
            "endpoints_app.gateway.session",
            "endpoints_app.gateway.upstream",
        ),
    ),
    (
        "interfaces and process mains: REST API, pages, admin, CLI, project wiring",
        (
            "endpoints_app.api",
            "endpoints_app.pages",
            "endpoints_app.admin",
            "endpoints_app.apps",
            "endpoints_app.authenticated",
            "endpoints_app.http_limits",
            "endpoints_app.cli",
            "endpoints_app.supervisor",
            "endpoints_app.setup",
            "endpoints_app.management",
            "endpoints_app.runtime.agent_main",
            "dashboard",
        ),
    ),
]

# Where an import of our own modules may sit inside a function: "module" for a whole process
# main, "module:Qualified.name" for one function. Each says why it cannot import at the top.
# Management commands (endpoints_app/management/commands/) would be listed here too.
ENTRY_POINTS: dict[str, str] = {
    "endpoints_app.apps:EndpointsAppConfig.ready": "signal receivers import the models, which exist only once the app registry is ready",
    "endpoints_app.cli.commands_server:cmd_up": "dispatches to a process main that needs Django; the CLI itself starts without it",
    "endpoints_app.cli.commands_server:cmd_runtime": "dispatches to a process main that needs Django; the CLI itself starts without it",
    "endpoints_app.cli.commands_server:cmd_setup": "dispatches to a process main that needs Django; the CLI itself starts without it",
    "endpoints_app.runtime.agent_main:main": "the runtime agent's process: sets Django up, then imports the agent",
    "endpoints_app.setup": "the setup process: the CLI imports it before Django is set up, main() sets it up and then runs the helpers that need models",
}

# Violations, as the tests print them, that work in progress removes. The goal is an empty list;
# an entry whose violation is gone fails the test until it is taken out.
KNOWN_VIOLATIONS: list[str] = []


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # our module it imports
    line: int
    function: str | None  # qualified name of the enclosing function, None at module level
    type_only: bool  # under ``if TYPE_CHECKING:``

    def where(self) -> str:
        inside = f" in {self.function}()" if self.function else ""
        return f"{self.source}:{self.line}{inside}"


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


MODULES = module_files()


def resolve(name: str) -> str | None:
    """Our module that ``import name`` loads: the longest prefix that is one of our modules."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


class _Reader(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.scope: list[str] = []
        self.functions = 0
        self.type_only = 0
        self.imports: list[Import] = []
        self.libraries: set[str] = set()  # top-level names of what is not ours, module level only

    def _enter(self, node: ast.AST, name: str, function: bool) -> None:
        self.scope.append(name)
        self.functions += function
        self.generic_visit(node)
        self.functions -= function
        self.scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._enter(node, node.name, function=False)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._enter(node, node.name, function=True)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._enter(node, node.name, function=True)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._enter(node, "<lambda>", function=True)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, name: str, line: int) -> None:
        target = resolve(name)
        if target is None:
            if not self.functions and not self.type_only:
                self.libraries.add(name.partition(".")[0])
            return
        if target != self.module:
            function = ".".join(self.scope) if self.functions else None
            self.imports.append(Import(self.module, target, line, function, bool(self.type_only)))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.package
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in MODULES else base, node.lineno)


def read_all() -> tuple[list[Import], dict[str, set[str]]]:
    imports: list[Import] = []
    libraries: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        reader = _Reader(module, path.name == "__init__.py")
        reader.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        imports += reader.imports
        libraries[module] = reader.libraries
    return imports, libraries


IMPORTS, LIBRARIES = read_all()


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching name, layer index)
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if name.endswith(".__init__"):
                matches = module == name.removesuffix(".__init__")
            else:
                matches = module == name or module.startswith(name + ".")
            if matches and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


def cycles(edges: dict[str, set[str]]) -> list[str]:
    """Each knot of modules that import one another (a strongly connected component, Tarjan's
    algorithm): its members, and one shortest cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[str] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                members = sorted(component)
                example = " -> ".join(_cycle_through(members, edges))
                found.append(f"{len(members)} modules import one another: {', '.join(members)}; e.g. {example}")

    for node in sorted(MODULES):
        if node not in index:
            visit(node)
    return found


def _cycle_through(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself (breadth first)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, set()) & members):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return component


def runtime_edges(*, module_level_only: bool = False) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in IMPORTS:
        if imp.type_only or (module_level_only and imp.function):
            continue
        edges.setdefault(imp.source, set()).add(imp.target)
    return edges


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_violations() -> dict[str, list[str]]:
    """Every breach of rules 1 to 4, by rule, as one line each."""
    found: dict[str, list[str]] = {"cycle": [], "upward": [], "in a function": [], "no layer": []}
    found["cycle"] = [f"cycle: {knot}" for knot in cycles(runtime_edges())]
    found["no layer"] = [f"no layer: {m}" for m in MODULES if layer_of(m) is None]
    for imp in IMPORTS:
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source is not None and target is not None and target > source:
            layer = LAYERS[target][0].split(":")[0]
            found["upward"].append(f"upward: {imp.where()} imports {imp.target} ({layer})")
        if imp.function and not imp.type_only and not is_entry_point(imp):
            found["in a function"].append(f"in a function: {imp.where()} imports {imp.target}")
    return found


def is_entry_point(imp: Import) -> bool:
    outermost = (imp.function or "").split(".")[0]
    qualified = ".".join((imp.function or "").split(".")[:2])
    return imp.source in ENTRY_POINTS or any(f"{imp.source}:{name}" in ENTRY_POINTS for name in (outermost, qualified))


VIOLATIONS = find_violations()


def new_violations(rule: str) -> list[str]:
    return [v for v in VIOLATIONS[rule] if v not in KNOWN_VIOLATIONS]


# --- the tests ------------------------------------------------------------------------------------


def test_there_is_no_import_cycle() -> None:
    assert new_violations("cycle") == []


def test_every_module_has_a_layer() -> None:
    assert new_violations("no layer") == []


def test_no_module_imports_a_higher_layer() -> None:
    assert new_violations("upward") == []


def test_only_entry_points_import_our_modules_inside_a_function() -> None:
    assert new_violations("in a function") == []


def test_every_entry_point_exists() -> None:
    for key in ENTRY_POINTS:
        module, _, function = key.partition(":")
        assert module in MODULES, key
        if function:
            tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
            names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)} | {
                f"{cls.name}.{node.name}"
                for cls in tree.body
                if isinstance(cls, ast.ClassDef)
                for node in cls.body
                if isinstance(node, ast.FunctionDef)
            }
            assert function in names, key


def test_the_known_violations_are_still_there() -> None:
    """The allowance only shrinks: an entry whose violation is gone must leave the list."""
    everything = {v for found in VIOLATIONS.values() for v in found}
    assert [v for v in KNOWN_VIOLATIONS if v not in everything] == []


def test_the_cli_imports_only_itself_at_module_level() -> None:
    edges = runtime_edges(module_level_only=True)
    for module in MODULES:
        if module.startswith("endpoints_app.cli"):
            outside = {m for m in reachable(module, edges) if not m.startswith("endpoints_app.cli")}
            assert outside == set(), module
            assert "django" not in LIBRARIES[module], module


@pytest.mark.parametrize("gateway", ["endpoints_app.gateway.app", "endpoints_app.http_limits"])
def test_the_gateway_reaches_neither_drf_nor_the_rest_api(gateway: str) -> None:
    loaded = reachable(gateway, runtime_edges())
    assert {m for m in loaded if m.startswith("endpoints_app.api")} == set()
    assert {m for m in loaded if "rest_framework" in LIBRARIES[m]} == set()


def test_the_model_server_never_loads_django() -> None:
    servers = [m for m in MODULES if m.startswith("endpoints_app.runtime.model_server")]
    assert servers
    for server in servers:
        loaded = reachable(server, runtime_edges())
        assert {m for m in loaded if "django" in LIBRARIES[m]} == set(), server


def test_jobs_name_tasks_that_celery_registers() -> None:
    assert set(jobs.TASK_NAMES) <= set(celery_app.tasks)

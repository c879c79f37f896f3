"""The house plan, enforced: no import circle, no upward import between layers, imports at the top of files.

Every import of ``src/`` and ``datamodules/`` is read with ``ast`` (top level and inside functions, relative
imports included). Layers, lowest first (see ``LAYERS``): a module may import its own layer or a lower one,
except that the engine and the domains sit side by side and never import each other (entry points and
applications join them). An import inside a function is allowed only for a third-party module, with a comment
on the line (or the line above) naming it optional (``# optional heavy dependency: wandb``).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("src", "datamodules")

# module-name prefix -> layer; the longest matching prefix wins
LAYERS: dict[str, str] = {
    # foundations: errors, file I/O, safe loading, name registries, config helpers, environment checks
    "src": "foundation",  # the package itself
    "src.errors": "foundation",
    "src.fileio": "foundation",
    "src.safe_load": "foundation",
    "src.registry": "foundation",
    "src.config": "foundation",
    "src.env_check": "foundation",
    "src.cli": "foundation",
    "src.options": "foundation",
    "src.config_check": "foundation",
    # shared data pieces (the shard-packing command line is an entry point, below)
    "datamodules": "data",
    "src.labels": "data",
    # engine: diffusion maths, networks, the LightningModule, checkpoints, the training runtime
    "src.diffusion": "engine",
    "src.backbones": "engine",
    "src.module": "engine",
    "src.conditioning": "engine",
    "src.checkpoint": "engine",
    "src.runtime": "engine",
    "src.callbacks": "engine", "src.ema": "engine", "src.preemption": "engine", "src.runlog": "engine",
    "src.runfolder": "engine", "src.metrics_log": "engine", "src.threads": "engine", "src.distributed": "engine",
    # domains: datamodules, media writers, metrics, shard codecs, domain maths; the registry that builds them
    "src.domains": "domain",
    # applications over both: later training stages, inverse problems, tools, reports, cross-domain dispatch
    "src.latent": "application",
    "src.distill": "application",
    "src.inverse": "application",
    "src.tools": "application",
    "src.report": "application",
    "src.media": "application",
    "src.metrics": "application",
    # entry points (python -m ...): parse options once, convert the config once, call a library API
    "src.train": "entry",
    "src.sample": "entry",
    "src.phema": "entry",
    "src.consolidate": "entry",
    "src.reconstruct": "entry",
    "src.restore": "entry",
    "src.anomaly": "entry",
    "src.report.__main__": "entry",
    "datamodules.shards": "entry",
}
RANK = {"foundation": 0, "data": 1, "engine": 2, "domain": 2, "application": 3, "entry": 4}
SIDE_BY_SIDE = {("engine", "domain"), ("domain", "engine")}  # same rank, and neither imports the other

OPTIONAL = re.compile(r"#.*\boptional\b", re.IGNORECASE)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer; add it to LAYERS in tests/engine/test_layers.py")


def _targets(module: str, is_package: bool, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The modules an import statement names (``from a import b`` is ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
    out = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        out.append(name)
    return out


def _visit(node: ast.AST, in_function: bool, module: str, path: Path, lines: list[str],
           modules: dict[str, Path], edges: set[str], problems: list[str]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            targets = [t for t in _targets(module, path.name == "__init__.py", child, modules) if t in modules]
            edges.update(t for t in targets if t != module)
            where = f"{path.relative_to(ROOT)}:{child.lineno}"
            if in_function and targets:
                problems.append(f"{where} imports project module {targets[0]} inside a function")
            elif in_function:
                above = lines[child.lineno - 2] if child.lineno > 1 else ""
                if not (OPTIONAL.search(lines[child.lineno - 1]) or OPTIONAL.search(above)
                        or OPTIONAL.search(lines[child.end_lineno - 1])):
                    problems.append(f"{where} imports a third-party module inside a function without a "
                                    "'# optional heavy dependency: NAME' comment")
        nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        _visit(child, nested, module, path, lines, modules, edges, problems)


@functools.cache
def read_imports() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> project modules it imports, problems with imports inside functions)."""
    modules = all_modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    problems: list[str] = []
    for module, path in modules.items():
        source = path.read_text()
        _visit(ast.parse(source), False, module, path, source.splitlines(), modules, edges[module], problems)
    return edges, problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path(sorted(component), edges))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def _path(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One closed import path through a strongly connected component, for the message."""
    members, start = set(component), component[0]
    previous = {start: None}
    queue = [start]
    while queue:  # breadth first from start back to start
        v = queue.pop(0)
        for w in sorted(edges[v] & members):
            if w == start:
                path = [v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    return component


def upward(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if RANK[theirs] > RANK[mine] or (mine, theirs) in SIDE_BY_SIDE:
                bad.append(f"{module} ({mine}) imports {target} ({theirs})")
    return bad


def test_no_import_cycle():
    edges, _ = read_imports()
    found = cycles(edges)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_upward_import_between_layers():
    edges, _ = read_imports()
    bad = upward(edges)
    assert not bad, "imports against the layer order (LAYERS in tests/engine/test_layers.py):\n" + "\n".join(bad)


def test_imports_inside_functions_only_for_named_optional_dependencies():
    _, problems = read_imports()
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer():
    for module in all_modules():
        layer_of(module)


def test_the_checker_sees_relative_and_in_function_imports(tmp_path):
    source = "def f():\n    from .b import x\n"
    tree = ast.parse(source)
    node = tree.body[0].body[0]
    assert _targets("src.a", False, node, {"src.a": Path(), "src.b": Path()}) == ["src.b"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]

"""The layout a newcomer reads top-down: imports flow one way (store <- llm <- runner <- analysis
<- widgets <- cli), no import cycle among moakit's modules (imports inside functions count),
no name starting with ``_`` used across modules, and no private attribute of another library."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "moakit"

# Each module's layer: a module may import its own layer and the layers below it.
LAYERS = [
    ("moakit.errors", "moakit.version"),
    ("moakit.store",),
    ("moakit.models", "moakit.steps", "moakit.prompts", "moakit.pipelines", "moakit.rank_parse",
     "moakit.mixture"),
    ("moakit.llm",),
    ("moakit.runner",),
    ("moakit.analysis",),
    ("moakit.widgets",),
    ("moakit.cli", "moakit.testing", "moakit"),
]
# IPython's and ipywidgets' display protocol names are public despite their underscore.
PROTOCOL = ("_repr_", "_ipython_", "_mimebundle_")


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def layer(mod: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for pre in prefixes:
            if (mod == pre or mod.startswith(pre + ".")) and (best is None or len(pre) > best[1]):
                best = (i, len(pre))
    assert best is not None, f"{mod} has no layer in tests/test_layout.py"
    return best[0]


def imports(mod: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported moakit module, names imported from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    typing_only = set()  # imports under "if TYPE_CHECKING:" never run
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for b in node.body for n in ast.walk(b)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("moakit"):
                    out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("moakit"):
                continue
            names = [a.name for a in node.names]
            for n in names:  # "from package import submodule"
                if f"{target}.{n}" in known:
                    out.append((f"{target}.{n}", [], node.lineno))
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest:
                out.append((target, rest, node.lineno))
    return out


def test_imports_flow_one_way_and_never_in_a_cycle():
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    wrong = []
    for m, p in mods.items():
        for target, _, line in imports(m, p, known):
            if target not in known or target == m:
                continue
            graph[m].add(target)
            # a package's __init__ may re-export its own modules; anything else follows the layers
            if layer(target) > layer(m) and not (m != "moakit" and target.startswith(m + ".")):
                wrong.append(f"{p.relative_to(ROOT.parent)}:{line} imports {target} (a higher layer)")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)

    # a cycle: a strongly connected component of more than one module (Tarjan)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package and its own modules (the __init__ re-exporting them) are not a cycle
            if len(comp) > 1 and not all(c == min(comp, key=len) or c.startswith(min(comp, key=len) + ".")
                                         for c in comp):
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles among moakit's modules: {cycles}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and not any(name.startswith(p) for p in PROTOCOL)


def test_no_private_name_crosses_a_module():
    mods = modules()
    known = set(mods)
    wrong = []
    for m, p in mods.items():
        for target, names, line in imports(m, p, known):
            for n in names:
                if _private(n):
                    wrong.append(f"{p.relative_to(ROOT.parent)}:{line} imports {n} from {target}")
            if any(_private(part) for part in target.split(".")):
                wrong.append(f"{p.relative_to(ROOT.parent)}:{line} imports the private module {target}")
    assert not wrong, "\n".join(wrong)


def test_no_private_attribute_of_another_module_or_library():
    """``x._name`` is allowed only where this module defines ``_name`` itself (its own classes'
    attributes); ``self._name`` and ``cls._name`` always."""
    wrong = []
    for m, p in modules().items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        own = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                own.add(node.value)  # __slots__ entries
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)  # dataclass fields
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                    continue
                wrong.append(f"{p.relative_to(ROOT.parent)}:{node.lineno} reads {ast.unparse(node)}")
    assert not wrong, "private attributes used across modules or libraries:\n" + "\n".join(wrong)

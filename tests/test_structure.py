"""The house rules, read from the code's own imports with ``ast`` (issue #23).

- no import circles among edgec's modules (function-local imports count too: they
  hide a circle from Python, not from a reader);
- ``passes/`` imports from ``compiler/`` only ``tvm_compat`` and ``errors``;
- deployment (``compiler/deploy/``) imports no pass and no torch, not even through
  another edgec module: a board runs it without either;
- ``targets/`` imports nothing of edgec;
- only ``compiler/tvm_compat.py`` imports the version-sensitive TVM namespaces;
- no private name (``_x``) is imported from another module.

Each rule is also run on a small tree that breaks it, so a rule that cannot fail
fails here.
"""
from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROOMS = ("compiler", "passes", "targets")   # folder X is imported as edgec.X
# TVM namespaces that moved or vanished between releases (design.md): imported
# through compiler/tvm_compat.py only, so a TVM upgrade changes one file
VERSION_SENSITIVE = ("tvm.s_tir.meta_schedule", "tvm.relax.frontend", "tvm.runtime",
                     "tvm.support", "tvm.contrib", "tvm.rpc", "tvm.ir.utils", "tvm_ffi",
                     "tvm.relax.transform.legalize_ops", "tvm.target.codegen")
COMPAT = "edgec.compiler.tvm_compat"
PASSES_MAY_USE = {COMPAT, "edgec.compiler.errors"}


def modules(root: pathlib.Path) -> dict:
    """edgec module name -> file."""
    out = {}
    for room in ROOMS:
        for path in sorted((root / room).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(["edgec", *parts])] = path
    return out


def imports(name: str, path: pathlib.Path) -> list:
    """(imported module, imported names, line) for every import in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            out.append((module, tuple(a.name for a in node.names), node.lineno))
    return out


def resolve(module: str, names: tuple, mods: dict) -> list:
    """The modules an import statement names: ``from pkg import a, b`` names the
    submodules ``pkg.a``, ``pkg.b`` when they are modules, else ``pkg`` itself."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in mods]
    return subs or [module]


def graph(root: pathlib.Path) -> tuple:
    """(modules, edges): module -> {edgec modules it imports}."""
    mods = modules(root)
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        for module, names, _ in imports(m, path):
            edges[m] |= {t for t in resolve(module, names, mods) if t in mods and t != m}
    return mods, edges


def circles(edges: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def closure(start: str, edges: dict) -> set:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += edges[m]
    return seen


def violations(root: pathlib.Path) -> list:
    """Every broken rule, one line each."""
    mods, edges = graph(root)
    bad = [f"import circle: {' <-> '.join(c)}" for c in circles(edges)]
    torch_users = {m for m, p in mods.items()
                   if any(i[0].split(".")[0] == "torch" for i in imports(m, p))}
    for m, path in mods.items():
        where = path.relative_to(root)
        for module, names, line in imports(m, path):
            named = resolve(module, names, mods)
            if m.startswith("edgec.passes"):
                for t in named:
                    if t.startswith("edgec.compiler") and t not in PASSES_MAY_USE:
                        bad.append(f"{where}:{line}: a pass imports {t} "
                                   f"(passes may use only {', '.join(sorted(PASSES_MAY_USE))})")
            if m.startswith("edgec.targets") and module.startswith("edgec"):
                bad.append(f"{where}:{line}: targets/ imports {module}")
            spelled = [module] + [f"{module}.{n}" for n in names]
            if m != COMPAT and any(t == s or t.startswith(s + ".")
                                   for t in spelled for s in VERSION_SENSITIVE):
                bad.append(f"{where}:{line}: {module} is version-sensitive: "
                           f"import it through {COMPAT}")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and m != COMPAT:
                bad.append(f"{where}:{line}: imports private {', '.join(private)} from {module}")
    for m in mods:
        if m.startswith("edgec.compiler.deploy"):
            reach = closure(m, edges)
            passes = sorted(r for r in reach if r.startswith("edgec.passes"))
            torch = sorted(reach & torch_users)
            if passes:
                bad.append(f"deployment module {m} reaches passes: {passes}")
            if torch:
                bad.append(f"deployment module {m} reaches torch through {torch}")
    return bad


def test_the_house_keeps_its_rules():
    bad = violations(ROOT)
    assert not bad, "\n".join(bad)


def test_there_is_a_deployment_room_and_every_room_has_modules():
    mods = modules(ROOT)
    for prefix in ("edgec.compiler.deploy.", "edgec.passes.", "edgec.targets"):
        assert any(m.startswith(prefix) for m in mods), prefix


def _tree(tmp_path, files: dict) -> pathlib.Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for room in ROOMS:
        (tmp_path / room).mkdir(exist_ok=True)
        (tmp_path / room / "__init__.py").touch()
    return tmp_path


CLEAN = {
    "compiler/errors.py": "class EdgecError(ValueError): pass\n",
    "compiler/tvm_compat.py": "import tvm\nfrom tvm.relax.frontend import detach_params\n",
    "compiler/deploy/__init__.py": "",
    "compiler/deploy/runtime.py": "from edgec.compiler.errors import EdgecError\n",
    "passes/prune.py": "from edgec.compiler.tvm_compat import tvm\n",
    "compiler/pipeline.py": "from edgec.passes import prune\nimport torch\n",
}

BROKEN = {
    "circle": {"compiler/a.py": "def f():\n    from edgec.compiler import b\n",
               "compiler/b.py": "from edgec.compiler.a import f\n"},
    "a pass imports": {"passes/bad.py": "from edgec.compiler.pipeline import run\n",
                       "compiler/pipeline.py": "def run(): pass\n"},
    "targets/ imports": {"targets/__init__.py": "from edgec.compiler import errors\n"},
    "version-sensitive": {"compiler/tune.py": "from tvm.s_tir.meta_schedule import Database\n"},
    "imports private": {"compiler/x.py": "from edgec.compiler.errors import _hidden\n"},
    "reaches passes": {"compiler/deploy/bench.py": "from edgec.compiler import helper\n",
                       "compiler/helper.py": "from edgec.passes.prune import tvm\n"},
    "reaches torch": {"compiler/deploy/bench.py": "from edgec.compiler import helper\n",
                      "compiler/helper.py": "def f():\n    import torch\n"},
}


def test_a_clean_tree_has_no_violations(tmp_path):
    assert violations(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_fails_on_a_tree_that_breaks_it(tmp_path, rule):
    bad = violations(_tree(tmp_path, {**CLEAN, **BROKEN[rule]}))
    assert bad and all(rule in line for line in bad), bad

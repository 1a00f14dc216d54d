"""The architecture stays readable from the tree: imports point down (no cycle), pruning never imports training,
the prunable models never import SMPL, data or Torch-Pruning, the stage file names live in compress/runs.py only,
and no module grows much past 600 lines."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "compress"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {n for n in _imports(p) if n in mods and n != m} for m, p in mods.items()}


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in graph[m]:
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_layers_that_must_not_meet():
    mods = _modules()
    for name, path in mods.items():
        imported = _imports(path)
        if name.startswith("compress.prune"):
            assert not any(i.startswith("compress.train") for i in imported), name
        if name.startswith("compress.models"):
            assert not any(i.startswith(("compress.smpl", "compress.data", "torch_pruning")) for i in imported), name
        if name == "compress.recipe":
            assert not any(i.split(".")[0] == "torch" for i in imported), "recipe.py must load without torch"


def test_stage_file_names_live_in_runs_only():
    for name, path in _modules().items():
        if name == "compress.runs":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("trained.pt", "pruned.pt", "finetuned.pt"):
                raise AssertionError(f"{path.name}:{node.lineno} names {node.value!r}: use compress.runs")


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert max(sizes.values()) <= 650, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]

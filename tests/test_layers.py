"""The layering of the package (docs/design.md, "Layers"), checked on the import graph.

- The library (saga.data, models, judge, losses, eval, train and the top-level helpers) never imports the
  application layer (saga.app, saga.cli), not even inside a function.
- The runtime (saga.judge, models, losses, eval, train) never imports the synthetic workshop (saga.synth); saga.data
  reaches it only inside the loader of the "synth" dataset, so a run on real data never loads it.
"""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARY = ("saga.data", "saga.models", "saga.judge", "saga.losses", "saga.eval", "saga.train", "saga.config",
           "saga.errors", "saga.images", "saga.registry", "saga.utils", "saga.deploy")
RUNTIME = ("saga.models", "saga.judge", "saga.losses", "saga.eval", "saga.train")


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "saga").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Absolute saga modules that `path` imports (inside functions too, unless top_level_only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m == "saga" or m.startswith("saga.")}


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_library_never_imports_the_application():
    bad = {name: sorted(m for m in _imports(path) if _under(m, ("saga.app", "saga.cli")))
           for name, path in _modules().items() if _under(name, LIBRARY)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_runtime_never_imports_the_synthetic_workshop():
    bad = {name: sorted(m for m in _imports(path) if _under(m, ("saga.synth",)))
           for name, path in _modules().items() if _under(name, RUNTIME)}
    assert {k: v for k, v in bad.items() if v} == {}
    data = {name: sorted(m for m in _imports(path, top_level_only=True) if _under(m, ("saga.synth",)))
            for name, path in _modules().items() if _under(name, ("saga.data",))}
    assert {k: v for k, v in data.items() if v} == {}


def test_training_and_the_judge_load_without_the_synthetic_world():
    code = ("import sys, saga.train, saga.judge, saga.data, saga.models; "
            "print(sorted(m for m in sys.modules if m.startswith(('saga.synth', 'saga.app', 'saga.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

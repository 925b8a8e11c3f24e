"""The package's structure: imports run down the flow, only the command lines see Hydra, start-up is light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline

PACKAGE = Path(pipeline.__file__).resolve().parent
# Rank of each stage in the flow; a module may import its own stage or any stage of a lower rank.
# train and predict share a rank and must not import each other: the member folder sits between them.
RANK = {"core": 0, "data": 1, "models": 2, "member": 3, "train": 4, "predict": 4, "submission": 5, "report": 6, "cli": 7}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "pipeline" else None


def test_every_module_belongs_to_a_stage_and_says_what_it_owns() -> None:
    for name, path in _modules().items():
        if name in ("pipeline", "pipeline.__init__"):
            continue
        stage = _stage(name) if not name.endswith("__init__") else name.split(".")[1]
        assert stage in RANK, f"{name} lies outside the stage packages {sorted(RANK)}"
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.splitlines()[0].strip(), f"{path} has no one-line docstring"


def test_imports_run_down_the_flow() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        stage = name.split(".")[1] if name.count(".") >= 1 and name.split(".")[1] in RANK else None
        if stage is None:
            continue
        for target in _imports(path, top_level_only=False):
            other = target.split(".")[1] if target.startswith("pipeline.") else None
            if other in RANK and other != stage and not RANK[other] < RANK[stage]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_only_the_command_lines_import_hydra_or_omegaconf() -> None:
    offenders = [
        f"{name} imports {target}"
        for name, path in _modules().items()
        if not name.startswith("pipeline.cli")
        for target in _imports(path, top_level_only=False)
        if target.split(".")[0] in ("hydra", "omegaconf")
    ]
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles_at_module_level() -> None:
    modules = _modules()
    graph = {
        name: {t for t in _imports(path, top_level_only=True) if t in modules and t != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_module_grows_past_about_400_lines() -> None:
    long = {name: n for name, p in _modules().items() if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


def test_command_line_start_up_imports_nothing_heavy() -> None:
    out = _run(
        "import sys, pipeline.cli.entry, pipeline.data, pipeline.member, pipeline.predict\n"
        "print(sorted(m for m in ('torch', 'timm', 'pytorch_lightning', 'hydra', 'omegaconf', 'numpy', 'pandas')"
        " if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_import_pipeline_registers_the_classic_networks_in_timm() -> None:
    out = _run(
        "import sys, pipeline\nassert 'torch' not in sys.modules\nimport timm\n"
        "m = timm.create_model('lenet5', num_classes=10, in_chans=1)\nprint(type(m).__name__, timm.is_model('nin'))"
    )
    assert out.split() == ["LeNet5", "True"]
    # timm imported before pipeline: registered at once.
    out = _run("import timm, pipeline\nprint(timm.is_model('alexnet'))")
    assert out.strip() == "True"


@pytest.mark.parametrize("package", ["core", "data", "models", "member", "train", "predict", "submission", "report"])
def test_packages_re_export_their_public_names(package: str) -> None:
    import importlib

    pkg = importlib.import_module(f"pipeline.{package}")
    assert pkg.__all__, f"pipeline.{package} re-exports nothing"
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None


def test_no_private_lightning_names_are_imported() -> None:
    """Private Lightning names (``_SubprocessScriptLauncher``, ``lightning.x._internal``) break on upgrades."""
    lightning = ("lightning", "lightning_fabric", "pytorch_lightning", "torchmetrics")
    offenders = [
        f"{name} imports {target}"
        for name, path in _modules().items()
        for target in _imports(path, top_level_only=False)
        if target.split(".")[0] in lightning and any(part.startswith("_") for part in target.split(".")[1:])
    ]
    assert not offenders, "\n".join(offenders)

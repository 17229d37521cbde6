"""The project's layers: imports point one way and nothing imports in a circle.

    webapp/ (views -> stores/services)  ->  model/ (the inference core)
    model/training/ (offline)           ->  model/, and webapp.settings / webapp.training_reads only

The server never imports TensorFlow or the training package; the core never imports webapp/.
model/train.py, evaluate.py and finetune.py are the documented commands' entry points: two lines
that hand over to model.training, and nothing else imports them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "webapp")
MAX_LINES = 450
# What the offline training package may use of the web app: the settings table and the trainer's reads.
TRAINING_MAY_IMPORT = {"webapp.settings", "webapp.training_reads"}
HEAVY = ("tensorflow", "keras")
# `python -m model.train` etc.: thin entry points into model.training, outside the core.
ENTRY_POINTS = {"model.train": "model.training.train", "model.evaluate": "model.training.evaluate",
                "model.finetune": "model.training.finetune", "model.classifier": "model.training.classifier_cli",
                "model.train_backbone": "model.training.backbone_train"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    files = {module_name(p): p for package in PACKAGES for p in (PROJECT_DIR / package).rglob("*.py")}
    files["server"] = PROJECT_DIR / "server.py"
    return files


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every module a file imports, anywhere in it (functions too); `from pkg import sub` counts as pkg.sub."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in modules)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = project_files()
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_nothing_imports_in_a_circle(graph):
    project = set(graph)
    edges = {name: {m for m in targets if m in project and m != name} for name, targets in graph.items()}
    # A package's own __init__ is where its submodules are wired together; an edge into it is not a cycle risk.
    edges = {name: {m for m in targets if m not in PACKAGES} for name, targets in edges.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_inference_core_never_imports_the_web_app_or_the_training_package(graph):
    for name, targets in graph.items():
        if in_package(name, "model") and not in_package(name, "model.training") and name not in ENTRY_POINTS:
            bad = {t for t in targets if in_package(t, "webapp") or in_package(t, "model.training")}
            assert not bad, f"{name} imports {bad}"


def test_the_server_never_imports_training_or_tensorflow(graph):
    for name, targets in graph.items():
        if in_package(name, "webapp") or name == "server":
            bad = {t for t in targets if in_package(t, "model.training") or t in ENTRY_POINTS
                   or t.split(".")[0] in HEAVY}
            assert not bad, f"{name} imports {bad}"


def test_the_entry_points_only_hand_over_to_the_training_package(graph):
    for name, target in ENTRY_POINTS.items():
        assert graph[name] == {target}, f"{name} imports {graph[name]}"
        assert not any(name in targets for other, targets in graph.items() if other != name), f"{name} is imported"


def test_training_uses_only_the_settings_and_the_trainer_reads_of_the_web_app(graph):
    for name, targets in graph.items():
        if in_package(name, "model.training"):
            used = {t for t in targets if in_package(t, "webapp")}
            assert used <= TRAINING_MAY_IMPORT, f"{name} imports {used - TRAINING_MAY_IMPORT}"


def test_no_module_of_the_app_or_the_core_is_over_450_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in project_files().items()}
    assert {name: n for name, n in long.items() if n > MAX_LINES} == {}


def test_a_started_app_has_no_tensorflow_loaded(tmp_path):
    """The app as server.py builds it, model loaded and a page served: TensorFlow, Keras and training stay out."""
    script = f"""
import sys
from webapp import create_app
app = create_app({{"DATA_DIR": {str(tmp_path / 'data')!r}, "SECRET_KEY": "x", "ADMIN_PASSWORD": "long enough pw"}})
app.extensions["faces"].wait_ready()
assert app.test_client().get("/api/status").status_code == 401
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras") or m.startswith("model.train")
                or m in ("model.evaluate", "model.finetune"))
print(loaded)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"

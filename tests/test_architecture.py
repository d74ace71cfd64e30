"""The layering that docs/ARCHITECTURE.md draws, checked on the source: no import cycle, models and tasks
never import the recipe parser, registry or trainer, and the trainer names no task, metric or model
attribute."""

from __future__ import annotations

import ast
from pathlib import Path

ZOO = Path(__file__).resolve().parent.parent / "zoo"


def _imports() -> dict[str, set[str]]:
    modules = {}
    for path in ZOO.rglob("*.py"):
        name = ".".join(path.relative_to(ZOO.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zoo"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("zoo")}
        graph[name] = {m for m in found if m in modules and m not in (name, "zoo")}
    return graph


def test_no_import_cycle():
    graph = _imports()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, f"import cycle: {' -> '.join(path[path.index(node):] + [node])}"
        if node in done:
            return
        for nxt in graph[node]:
            visit(nxt, path + [node])
        done.add(node)

    for module in graph:
        visit(module, [])


def test_models_and_tasks_import_only_lower_layers():
    upper = {"zoo.recipe", "zoo.registry", "zoo.trainer", "zoo.session", "zoo.runs", "zoo.cli", "zoo.train_state",
             "zoo.optim", "zoo.compare", "zoo.export", "zoo.reporting", "zoo.sweep"}
    for module, imports in _imports().items():
        if module.startswith(("zoo.models", "zoo.tasks", "zoo.data", "zoo.bases", "zoo.config", "zoo.specs")):
            assert not imports & upper, f"{module} imports {sorted(imports & upper)}"
    users = sorted(p.name for p in ZOO.rglob("*.py") if "import torch.distributed" in p.read_text(encoding="utf-8")
                   or "from torch.distributed" in p.read_text(encoding="utf-8"))
    assert users == ["dist.py"], users  # the only module that imports torch.distributed
    launcher = (ZOO / "launch.py").read_text(encoding="utf-8")  # it runs torchrun as a command, torch-free
    assert not any(line.startswith(("import torch", "from torch", "from zoo")) for line in launcher.splitlines())


def test_the_trainer_names_no_task_metric_or_model_attribute():
    source = (ZOO / "trainer.py").read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    for word in ("hasattr", "getattr", "lm_head", "accuracy", "classify", "gpt2", "GPT", "LSTM", "char_rnn",
                 "precision_", "recall", "f1", "test_metrics", "vocab_size"):
        assert word not in code, word
    for path in ZOO.rglob("*.py"):  # optional hooks are declared with defaults, never probed
        text = path.read_text(encoding="utf-8")
        probes = [line for line in text.splitlines() if "hasattr(" in line]
        assert probes == [], f"{path.name}: {probes}"

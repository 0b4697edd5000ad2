"""The package's shape: packages by layer, every import going down the layers or staying in its package (imports
inside functions and `if TYPE_CHECKING:` blocks included), no import cycle, no function over 60 lines, and the world
registry open to a task's own world."""

from __future__ import annotations

import ast
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from helpers import TINY, run_cli

from worldmodels.controller.linear import Controller
from worldmodels.play import evaluators

PACKAGE = Path(__file__).resolve().parent.parent / "worldmodels"
LONGEST = 60
# bottom to top; a module may import its own package or a lower layer, never a package beside it or above it
LAYERS = [
    {"worldmodels", "core"},  # the root only registers gym ids by name
    {"config"},
    {"runs"},
    {"vision", "memory", "controller", "training"},
    {"data"},
    {"agent"},
    {"worlds"},
    {"play"},
    {"stages"},
    {"nas", "cli"},
    {"__main__"},
]


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path], where: str = "anywhere") -> set[str]:
    """The package's modules that `name` imports anywhere in its file (or, with where="in functions", inside a
    function's body only)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    if where == "in functions":
        functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nodes = [n for f in functions for n in ast.walk(f)]
    else:
        nodes = list(ast.walk(tree))  # type-only and in-function imports count too
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None (depth-first search with the path on a stack)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert "worldmodels.stages.evolution" in graph["worldmodels.stages.pipeline"]  # the walker sees the imports
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def package_of(name: str) -> str:
    """The layer package a dotted module belongs to: `worldmodels.stages.rounds` -> `stages`."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_breaks(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up the layers or sideways into another package of the same layer."""
    layer = {package: i for i, packages in enumerate(LAYERS) for package in packages}
    return [
        f"{name} -> {target}"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if package_of(name) != package_of(target) and layer[package_of(target)] >= layer[package_of(name)]
    ]


def test_the_layer_rule_catches_an_import_upwards():
    graph = {"worldmodels.core.errors": {"worldmodels.stages.rounds"}, "worldmodels.vision.vae": {"worldmodels.memory"}}
    assert layer_breaks(graph) == [
        "worldmodels.core.errors -> worldmodels.stages.rounds",
        "worldmodels.vision.vae -> worldmodels.memory",
    ]
    assert layer_breaks({"worldmodels.stages.rounds": {"worldmodels.stages", "worldmodels.core.errors"}}) == []


def test_every_import_goes_down_the_layers_or_stays_in_its_package():
    known = modules()
    assert {package_of(name) for name in known} <= set().union(*LAYERS)  # a new package must be given a layer
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert not layer_breaks(graph), layer_breaks(graph)


def test_only_the_command_line_imports_the_package_inside_functions():
    """`cli.py` imports the stages when a command runs, so `--help` stays fast; nothing else hides an import."""
    known = modules()
    hiding = {
        name: found
        for name, path in known.items()
        if name != "worldmodels.cli" and (found := imported(name, path, known, "in functions"))
    }
    assert not hiding, hiding
    assert imported("worldmodels.cli", known["worldmodels.cli"], known, "in functions")  # the walker sees them


def test_the_core_never_imports_the_nas_task():
    """The codebook world's task reaches the core only through the registries (entry points), as one's own would."""
    known = modules()
    core = {name: path for name, path in known.items() if not name.startswith("worldmodels.nas")}
    reaching = {
        name for name, path in core.items() if any(m.startswith("worldmodels.nas") for m in imported(name, path, known))
    }
    assert not reaching, reaching
    assert any(
        m.startswith("worldmodels.") for m in imported("worldmodels.nas.search", known["worldmodels.nas.search"], known)
    )


def test_no_function_longer_than_60_lines():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LONGEST
    ]
    assert not long, long


class Bandit:
    """A world of one's own: C sees [1, 0] and its one output should be 0.5; the return is minus the squared miss."""

    space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def __init__(self):
        self.steps = 0

    def returns(self, candidates: np.ndarray, seeds: list[int], progress: str | None = None) -> np.ndarray:
        controller = Controller.from_flat(candidates, 2, self.space)
        out = controller.outputs(torch.ones(len(candidates), 1), torch.zeros(len(candidates), 1))[:, 0].numpy()
        self.steps += len(candidates) * len(seeds)
        return np.repeat(-((out - 0.5) ** 2)[:, None], len(seeds), 1)

    def close(self, graceful: bool = True) -> None:
        pass

    def __enter__(self) -> "Bandit":
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_a_registered_world_of_ones_own_trains_a_controller(tmp_path, capsys):
    """register_world is the way in for a task's own world: the recipe names it and train-controller searches in it."""
    evaluators.register_world("bandit", lambda cfg, run: evaluators.SearchWorld(2, Bandit.space, Bandit))
    assert isinstance(Bandit(), evaluators.Evaluator)
    args = ["--checkpoints", tmp_path, "--set", 'controller.world="bandit"', "--set", "controller.generations=12"]
    assert run_cli("train-controller", TINY, *args) == 0
    kept = torch.load(tmp_path / "tiny" / "controller.pt", weights_only=True)
    assert kept["score"] > -0.01  # from -0.25 at C = 0 to an output near 0.5
    assert run_cli("train-controller", TINY, *args[:2], "--set", 'controller.world="nowhere"') == 2
    assert "controller.world must be one of" in capsys.readouterr().err

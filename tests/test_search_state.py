"""The CMA-ES state is plain data: rebuilt bit for bit, and a crafted file in a run folder runs nothing."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from helpers import cli_stage, one_error_line

from worldmodels.controller import search_state
from worldmodels.controller.search_state import Progress
from worldmodels.runs import checkpoints

SEARCH = {"dim": 20, "population": 8, "sigma0": 0.3, "seed": 4}


def advance(es, start: int, stop: int):
    """Generations start..stop on a fixed noisy objective (the draws come from numpy's global generator,
    as in a run)."""
    for g in range(start, stop):
        candidates = es.ask()
        es.tell(candidates, [float(np.sum(x**2)) + np.random.default_rng(g).normal() for x in candidates])
    return es


def test_a_rebuilt_search_continues_bit_for_bit(tmp_path):
    straight = advance(search_state.fresh_search(SEARCH), 0, 40)
    interrupted = advance(search_state.fresh_search(SEARCH), 0, 12)
    progress = Progress(
        generation=12,
        best_score=1.5,
        best=np.arange(20.0),  # a controller of the search's size
        world_state={"archive": {(1, 2): 0.5}, "queries": 3},  # a stateful world's own state, tuple keys included
        history=[{"generation": 10, "kind": "mean", "params": np.ones(20), "score": -2.0}],
    )
    search_state.save(tmp_path / "cmaes.pt", interrupted, SEARCH, progress)
    np.random.seed(123)  # whatever ran meanwhile; the state file restores numpy's generator
    es, restored, np_state = search_state.load(tmp_path / "cmaes.pt", SEARCH)
    np.random.set_state(np_state)
    assert es is not interrupted and es.countiter == 12
    advance(es, 12, 40)
    assert np.array_equal(es.mean, straight.mean) and es.sigma == straight.sigma
    assert np.array_equal(es.sm.C, straight.sm.C) and es.countevals == straight.countevals
    assert (
        restored.archive == {(1, 2): 0.5}
        and restored.best_score == 1.5
        and np.array_equal(restored.best, np.arange(20.0))
    )
    assert restored.history[0]["kind"] == "mean" and np.array_equal(restored.history[0]["params"], np.ones(20))


def test_the_file_is_read_without_unpickling_code(tmp_path):
    """torch.load(weights_only=True) reads it: tensors, numbers, strings and containers only."""
    search_state.save(tmp_path / "cmaes.pt", advance(search_state.fresh_search(SEARCH), 0, 3), SEARCH, Progress())
    payload = torch.load(tmp_path / "cmaes.pt", weights_only=True)
    assert payload["kind"] == "cmaes" and payload["search"] == SEARCH


def test_a_changed_population_or_sigma0_is_refused(tmp_path):
    search_state.save(tmp_path / "cmaes.pt", search_state.fresh_search(SEARCH), SEARCH, Progress())
    for key, value in (("population", 16), ("sigma0", 0.1), ("dim", 21)):
        with pytest.raises(search_state.WorldModelsError, match=f"{key}|parameters"):
            search_state.load(tmp_path / "cmaes.pt", SEARCH | {key: value})


class Payload:
    """What an attacker pickles: unpickling calls `open(marker, 'w')`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_an_old_pickled_state_is_refused_and_never_unpickled(copy_run, capsys, tmp_path):
    run = copy_run["dir"]
    marker = tmp_path / "pwned"
    (run / "cmaes.pt").unlink()
    (run / "cmaes.pkl").write_bytes(pickle.dumps(Payload(str(marker))))
    assert (
        cli_stage(
            "train-controller", copy_run["checkpoints"], copy_run["rollouts"], "--set", "controller.generations=3"
        )
        == 2
    )
    line = one_error_line(capsys, "train-controller")
    assert "cmaes.pkl" in line and "Delete it" in line
    assert not marker.exists()
    # the pipeline refuses it the same way
    assert cli_stage("pipeline", copy_run["checkpoints"], copy_run["rollouts"]) == 2
    assert "cmaes.pkl" in one_error_line(capsys, "pipeline") and not marker.exists()


def test_a_crafted_state_file_runs_nothing(copy_run, capsys, tmp_path):
    run, marker = copy_run["dir"], tmp_path / "pwned"
    saved = checkpoints.load(run / "cmaes.pt", "cmaes")
    crafted = {  # each a way to smuggle code into a plain-data tree
        "pickled object": lambda: torch.save({"kind": "cmaes", "x": Payload(str(marker))}, run / "cmaes.pt"),
        "foreign class": lambda: checkpoints.save(run / "cmaes.pt", saved | {"es": {"$obj": "os:system", "attrs": {}}}),
        "code the search lacks": lambda: checkpoints.save(
            run / "cmaes.pt", saved | {"es": saved["es"] | {"attrs": saved["es"]["attrs"] | {"evil": {"$code": True}}}}
        ),
        "options from the file": lambda: checkpoints.save(
            run / "cmaes.pt",
            saved
            | {
                "es": saved["es"]
                | {"attrs": saved["es"]["attrs"] | {"opts": {"$obj": "cma.options_parameters:CMAOptions", "attrs": {}}}}
            },
        ),
    }
    for name, write in crafted.items():
        write()
        assert (
            cli_stage(
                "train-controller", copy_run["checkpoints"], copy_run["rollouts"], "--set", "controller.generations=3"
            )
            == 2
        ), name
        line = one_error_line(capsys, "train-controller")
        assert "cmaes.pt" in line, (name, line)
        assert not marker.exists(), name
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


@pytest.mark.parametrize(
    "field, damage",
    [
        ("es.mean", lambda es, p: setattr(es, "mean", np.zeros(5))),  # the wrong length
        ("es.countiter", lambda es, p: setattr(es, "countiter", 10**12)),  # a search that would "finish" at once
        ("es.sigma", lambda es, p: setattr(es, "sigma", "large")),  # the wrong type
        ("es.sm.C", lambda es, p: es.sm.C.__setitem__((0, 0), np.nan)),
        ("progress.generation", lambda es, p: setattr(p, "generation", 10**12)),
        ("progress.best", lambda es, p: setattr(p, "best", np.ones(3))),
    ],
)
def test_a_state_with_wrong_types_lengths_or_ranges_is_refused(copy_run, capsys, field, damage):
    path = copy_run["dir"] / "cmaes.pt"
    es, progress, _ = search_state.load(path)
    saved = checkpoints.load(path, "cmaes")
    damage(es, progress)
    search_state.save(path, es, saved["search"], progress)  # a well-formed file: only its contents are wrong
    stage = ("train-controller", copy_run["checkpoints"], copy_run["rollouts"], "--set", "controller.generations=3")
    assert cli_stage(*stage) == 2
    line = one_error_line(capsys, "train-controller")
    assert "cmaes.pt" in line and field in line and "restart the search" in line, line

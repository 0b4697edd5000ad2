"""The codebook NAS pipeline over a few seeds: the controller's search against random search.

    python benchmarks/codebook_nas.py [--seeds 0 1 2] [--checkpoints DIR]

Per seed, `worldmodels pipeline envs/codebook_nas.toml` (controller.seed = nas.seed = the seed) and one JSON
line: both winners trained for real (from report.json), and the best surrogate objective each search had
found after its first N distinct architectures, for several N (the controller's archive keeps query order).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from worldmodels import cli, config
from worldmodels.controller import search_state
from worldmodels.nas.search import best_of, fit_surrogate, objective, random_search
from worldmodels.nas.space import Architecture
from worldmodels.runs.checkpoints import Run

RECIPE = "envs/codebook_nas.toml"
BUDGETS = (100, 300, 1000, 3000, 10_000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--checkpoints", default="checkpoints")
    args = p.parse_args()
    for seed in args.seeds:
        name = f"codebook_nas_seed{seed}"
        overrides = [f"controller.seed={seed}", f"nas.seed={seed}"]
        start = time.time()
        argv = ["pipeline", RECIPE, "--run", name, "--checkpoints", args.checkpoints]
        if cli.main(argv + [a for o in overrides for a in ("--set", o)]) != 0:
            raise SystemExit(f"pipeline failed for seed {seed}")
        seconds = time.time() - start
        cfg = config.load(RECIPE, overrides + [("name", name)])
        run = Run(args.checkpoints, cfg)
        report = json.loads(run.report.read_text())
        progress = search_state.load_progress(run.cmaes)
        found = [(Architecture.parse(a), s) for a, s in progress.archive.items()]
        surrogate = fit_surrogate(cfg)
        curve = {}
        for n in [b for b in BUDGETS if b <= len(found)] + [len(found)]:
            mine = dict(found[:n])
            theirs = random_search(cfg, surrogate, n, seed)
            curve[n] = {
                name: round(objective(cfg, scored[best_of(cfg, scored)], best_of(cfg, scored)), 4)
                for name, scored in (("controller_search", mine), ("random_search", theirs))
            }
        print(
            json.dumps(
                {
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "seed": seed,
                    "pipeline_seconds": round(seconds, 1),
                    "surrogate_queries": report["surrogate_queries"],
                    "surrogate_spearman": report["surrogate_spearman"],
                    "controller_search": report["controller_search"],
                    "random_search": report["random_search"],
                    "best_objective_by_budget": curve,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

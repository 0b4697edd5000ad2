"""The `worldmodels` command: one subcommand per stage, plus `pipeline`.

Only the standard library and the recipe parser load at start-up, so `--help` answers at once; torch,
gymnasium and pycma load when a stage runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

from worldmodels import __version__
from worldmodels import config as config_lib
from worldmodels.core.errors import WorldModelsError
from worldmodels.play import evaluators

CODEBOOK_STAGES = ["train-vision", "train-controller", "evaluate", "pipeline", "study"]
WRITING_STAGES = [
    "collect",
    "train-vision",
    "train-memory",
    "train-controller",
    "pipeline",
    "study",
]  # these make the run's folders
DATA_PARALLEL_STAGES = ["train-vision", "train-memory"]  # the stages torchrun can spread over processes
STAGES = {  # each stage and what it does, for --help
    "collect": "play the collection policy in the real world and store the episodes",
    "train-vision": "train V on the collected frames",
    "sample": "draw V's prior samples and reconstructions as PNG grids",
    "encode": "cache V's latents of every episode for M",
    "train-memory": "train M (the MDN-RNN) on the latent sequences",
    "train-controller": "search C with CMA-ES in the real world, the dream or the codebook world",
    "evaluate": "score C over fixed-seed episodes and write report.json",
    "pipeline": "every stage in order, each skipping itself when done (plus iterative rounds for dream recipes)",
    "dream": "GIFs of M's dream beside the real episode it starts from",
    "tau-sweep": "the dream-trained controller's real score across dream temperatures",
    "study": (
        "the pipeline once per seed, each in its own run folder, and the IQM over seeds with a 95 percent interval"
    ),
}


def _add_recipe_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `recipes` and `recipe show` commands, which read recipes and run no stage."""
    sub.add_parser(
        "recipes", help="list the recipes that ship with the package", description="list the shipped recipes"
    )
    show = sub.add_parser(
        "recipe",
        help="print a recipe with every field and its meaning",
        description="print a recipe (a shipped name or a path) with every field and its meaning",
    )
    show.add_argument("action", choices=["show"])
    show.add_argument("name", help="a shipped recipe's name (see `worldmodels recipes`) or a path")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def _add_common_options(s: argparse.ArgumentParser) -> None:
    """The recipe, overrides, run name, folders and device that every stage takes."""
    s.add_argument("recipe", help="a TOML recipe, e.g. envs/cartpole.toml, or a shipped recipe's name, e.g. cartpole")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe value (repeatable)",
    )
    s.add_argument(
        "--run",
        "--run-name",
        dest="run",
        help="run name (default: the recipe's name); under torchrun write --run-name, which torchrun "
        "does not take for its own --run-path",
    )
    s.add_argument("--checkpoints", default="checkpoints", help="folder of run folders")
    s.add_argument("--rollouts", default="rollouts", help="folder of collected episodes")
    s.add_argument("--device", help="auto | cpu | cuda | mps (default: the recipe's)")


def _add_stage_options(s: argparse.ArgumentParser, stage: str) -> None:
    """The options only some stages take, such as --world, --seeds or --backend."""
    if stage == "sample":
        s.add_argument("-n", type=int, default=16, help="frames per grid")
        s.add_argument("--temperature", type=float, default=1.0, help="prior spread")
    if stage in ("train-controller", "evaluate"):
        s.add_argument(
            "--world",
            choices=evaluators.known_worlds() if stage == "train-controller" else evaluators.BUILT_IN,
            help="where C acts (default: the recipe's controller.world for training, real for evaluate)",
        )
    if stage == "study":
        s.add_argument(
            "--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds, one pipeline each (default: 0-4)"
        )
        s.add_argument(
            "--from",
            dest="start",
            choices=["memory", "controller"],
            default="collect",
            help="reseed only this stage and the later ones; the earlier ones run once and every seed shares "
            "them (default: every stage reseeded)",
        )
    if stage in ("train-controller", "evaluate", "pipeline", "tau-sweep", "study"):
        s.add_argument(
            "--backend",
            choices=config_lib.CHOICES["controller.backend"],
            help="where real episodes run (default: the recipe's controller.backend)",
        )
        s.add_argument("--address", help="ray: 'auto' or HOST:PORT of a running Ray cluster (default: a local one)")
    if stage in ("evaluate", "tau-sweep"):
        s.add_argument("--episodes", type=int, help="episodes (default: the recipe's evaluate.episodes)")
    if stage == "evaluate":
        s.add_argument(
            "--policy",
            help="play an outside policy on [z, h] instead of C: module:callable, or an SB3 zip "
            "(with --algo); the report goes to report_policy.json",
        )
        s.add_argument("--algo", help="the SB3 algorithm of a --policy zip: ppo, a2c, dqn, sac, td3 or ddpg")
    if stage == "tau-sweep":
        s.add_argument("--tau", type=float, nargs="+", help="dream temperatures (default: the recipe's dream.tau)")
    if stage == "dream":
        s.add_argument("--tau", type=float, help="dream temperature (default: the recipe's dream.tau)")
        s.add_argument("--seed", type=int, default=0, help="the real episode's seed")
        s.add_argument("--scale", type=int, default=2, help="GIF enlargement")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worldmodels", description="World Models agents: V (VAE), M (MDN-RNN), C (CMA-ES)."
    )
    p.add_argument("--version", action="version", version=f"worldmodels {__version__}")
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_recipe_commands(sub)
    for stage, description in STAGES.items():
        s = sub.add_parser(stage, help=description, description=description)
        _add_common_options(s)
        _add_stage_options(s, stage)
    return p


def run_stage(args: argparse.Namespace) -> object:
    from worldmodels.runs import lock
    from worldmodels.runs.checkpoints import Run

    overrides: list[config_lib.Override] = list(args.overrides)
    flags = [  # the CLI's own flags, as (key, value): never turned into TOML text and parsed again
        ("name", args.run),
        ("device", args.device or None),
        ("evaluate.episodes", getattr(args, "episodes", None)),
        ("controller.backend", getattr(args, "backend", None) or None),
        ("controller.address", getattr(args, "address", None) or None),
        ("controller.world", args.world or None if args.stage == "train-controller" else None),
        ("dream.tau", args.tau if args.stage == "dream" else None),
    ]
    overrides += [(key, value) for key, value in flags if value is not None]
    check_arguments(args)
    cfg = config_lib.load(args.recipe, overrides)
    evaluators.check_world_name(cfg)
    if cfg.collect.driver and Path(cfg.collect.driver).name == cfg.collect.driver:  # a run's name, not a path:
        # that run folder under the same --checkpoints, so a driver and its dream recipe move together
        cfg.collect.driver = str(Path(args.checkpoints) / cfg.collect.driver)
    if args.stage == "study" and args.run is None:  # beside the recipe's own run folder, not inside it
        cfg.name = f"{cfg.name}_study"
        config_lib.check_name(cfg.name)
    run = Run(args.checkpoints, cfg)
    rollouts_root = Path(args.rollouts)
    refuse_stage(args, cfg)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank and args.stage in WRITING_STAGES:  # made before locking, so the first of two new runs holds them
        run.dir.mkdir(parents=True, exist_ok=True)
        if args.stage in ("collect", "pipeline", "study") and cfg.controller.world != "codebook":
            (rollouts_root / cfg.name).mkdir(parents=True, exist_ok=True)
    with lock.hold([run.dir, rollouts_root / cfg.name] if main_rank else []):
        return run_locked(args, cfg, run, rollouts_root)


def check_arguments(args: argparse.Namespace) -> None:
    """Numbers given on the command line, refused like the recipe's own: one line naming the option."""
    numbers = [
        ("-n", getattr(args, "n", None)),
        ("--temperature", getattr(args, "temperature", None)),
        ("--scale", getattr(args, "scale", None)),
        ("--seed", getattr(args, "seed", None)),
    ]
    numbers += [
        ("--tau", t)
        for t in (args.tau if isinstance(getattr(args, "tau", None), list) else [getattr(args, "tau", None)])
    ]
    for option, value in numbers:
        if value is not None and (not math.isfinite(value) or value < 0 or value == 0 and option in ("-n", "--scale")):
            raise WorldModelsError(
                f"{option} must be a finite number{' above 0' if option in ('-n', '--scale') else ', 0 or more'}, "
                f"got {value}"
            )


def refuse_stage(args: argparse.Namespace, cfg: config_lib.Config) -> None:
    """Stages a recipe or a launcher does not have, refused before anything is made."""
    from worldmodels.core import distributed

    codebook = cfg.controller.world == "codebook"
    if distributed.launched() and (args.stage not in DATA_PARALLEL_STAGES or codebook):
        raise WorldModelsError(
            f"'{args.stage}' runs in one process; under torchrun only "
            f"{' and '.join(DATA_PARALLEL_STAGES)} of frame recipes do"
        )
    if codebook and args.stage not in CODEBOOK_STAGES:
        raise WorldModelsError(
            f"a codebook-world recipe has no '{args.stage}' stage; its stages are {', '.join(CODEBOOK_STAGES)}"
        )
    if codebook and getattr(args, "world", None) not in (None, "codebook"):
        raise WorldModelsError(f"a codebook-world recipe is evaluated in the codebook world, not '{args.world}'")


def run_locked(args: argparse.Namespace, cfg: config_lib.Config, run, rollouts_root: Path) -> object:
    """The stage itself, with the run folder's lock held."""
    from worldmodels import stages
    from worldmodels.core import distributed
    from worldmodels.stages import evolution, fidelity, sweep, watch
    from worldmodels.stages.pipeline import pipeline
    from worldmodels.training import pick_device

    if distributed.launched():
        cfg.device = str(distributed.init(pick_device(cfg.device)))  # cuda:LOCAL_RANK, or cpu
    else:
        pick_device(cfg.device)  # every stage refuses a device this machine lacks, those that run on the CPU too
    if args.stage != "collect":  # every reader, not only the trainers: checkpoints made for another recipe are refused
        stages.check_run(cfg, run)  # before recording the recipe, so a refused recipe leaves the old one
    if args.stage in WRITING_STAGES and distributed.is_main():
        run.write_recipe()
    if args.stage == "collect":
        return {k: v for k, v in stages.collect(cfg, rollouts_root).items() if k != "episodes"}
    task = evaluators.task_stages(cfg)  # a world with its own V and stages (the codebook world's NAS task)
    if task is not None and args.stage in ("train-vision", "evaluate"):
        if args.stage == "train-vision":
            return task.train_vision(cfg, run)["losses"]
        return summary(task.evaluate(cfg, run))
    if args.stage == "train-vision":
        trained = stages.train_vision(cfg, run, rollouts_root)
        return trained["losses"] | trained.get("compressor", {})  # a pretrained V's held-out error and speed
    if args.stage == "sample":
        return [str(p) for p in stages.sample(cfg, run, rollouts_root, args.n, args.temperature)]
    if args.stage == "encode":
        return stages.encode(cfg, run, rollouts_root)
    if args.stage == "train-memory":
        return stages.train_memory(cfg, run)["losses"]
    if args.stage == "train-controller":
        result = evolution.train_controller(cfg, run)
        report = fidelity.controller_report(cfg, run)
        return result if report is None else result | {"dream_real_spearman": report["spearman"]}
    if args.stage == "evaluate" and args.policy:
        from worldmodels.play.policies import evaluate_policy

        return summary(evaluate_policy(cfg, run, args.policy, args.algo))
    if args.stage == "evaluate":
        return summary(stages.evaluate(cfg, run, args.world or "real"))
    if args.stage == "dream":
        return watch.dream_gifs(cfg, run, args.seed, args.scale)
    if args.stage == "tau-sweep":
        return sweep.tau_sweep(cfg, run, args.tau or [cfg.dream.tau])
    if args.stage == "study":
        from worldmodels.stages.study import study

        result = study(cfg, run.dir, rollouts_root / cfg.name, args.seeds, args.start)
        return {k: v for k, v in result.items() if k != "seeds"} | {
            "seeds": {r["seed"]: r["mean"] for r in result["seeds"]}
        }
    return summary(pipeline(cfg, run, rollouts_root))


def recipes_command(args: argparse.Namespace) -> str:
    """`recipes`: each shipped recipe with its first comment line; `recipe show`:
    a recipe with every field explained."""
    if args.stage == "recipe":
        return config_lib.explain(config_lib.load(args.name, args.overrides))
    lines = []
    for name, path in config_lib.shipped_recipes().items():
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        lines.append(f"{name:<20} {first}")
    return "\n".join(lines) + "\n"


def summary(report: dict) -> dict:
    keys = (
        "world",
        "env",
        "episodes",
        "mean",
        "std",
        "success_rate",
        "real_steps",
        "surrogate_queries",
        "controller_search",
        "random_search",
    )
    return {k: report[k] for k in keys if k in report}


def keep_thread_errors() -> list[OSError]:
    """A background thread that fails on a full or read-only disk (TensorBoard's event writer) adds its error to the
    list instead of printing a traceback: the stage says it in its one line."""
    errors: list[OSError] = []

    def hook(failure: threading.ExceptHookArgs) -> None:
        if isinstance(failure.exc_value, OSError):
            errors.append(failure.exc_value)
        else:
            threading.__excepthook__(failure)

    threading.excepthook = hook
    return errors


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.stage in ("recipes", "recipe"):
        try:
            sys.stdout.write(recipes_command(args))
        except WorldModelsError as exc:
            print(f"worldmodels {args.stage}: error: {exc}", file=sys.stderr)
            return 2
        return 0
    start = time.time()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # distributed.launched(), before torch loads
    rank = int(os.environ.get("RANK", "0")) if launched else 0
    where = f" (rank {rank})" if launched else ""
    thread_errors = keep_thread_errors()
    try:
        result = run_stage(args)
        if thread_errors:  # the stage's own files are complete; what a writer thread lost is said in one line
            raise thread_errors[0]
    except WorldModelsError as exc:
        print(f"worldmodels {args.stage}{where}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"worldmodels {args.stage}{where}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (
        OSError
    ) as exc:  # read-only or full disk, a folder where a file belongs, permissions: the path and the reason
        where_file = f" '{exc.filename}'" if exc.filename else ""
        print(
            f"worldmodels {args.stage}{where}: error: {exc.strerror or exc}{where_file}; nothing half-written was left",
            file=sys.stderr,
        )
        return 2
    finally:
        if "worldmodels.distributed" in sys.modules:
            sys.modules["worldmodels.distributed"].shutdown()
    if rank == 0:
        print(json.dumps({"stage": args.stage, "seconds": round(time.time() - start, 1), "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

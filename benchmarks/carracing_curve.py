"""Real-world CarRacing searches' learning curves beside Ha & Schmidhuber's, on an axis of real frames. JSON + PNG.

    python benchmarks/carracing_curve.py RUN_DIR [RUN_DIR ...] [--out curve.png]

Several runs (a study's `seed_S` folders) share one picture, a colour each. Reads each run's TensorBoard events:
the re-evaluated scores (the generation's best and the distribution's mean, on `controller.eval_rollouts` fresh
episodes) by generation, and the real frames the search had spent by then. Ha & Schmidhuber's published points
(their logs: 867 at generation 100, 880 at 200, 1,024-episode evaluations) are placed at the frames their search
spent by then: 64 candidates x 16 episodes of at most 1,000 frames a generation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

HA = [(100, 867.0), (200, 880.0)]  # (generation, mean score): Ha & Schmidhuber's logs
HA_FRAMES_PER_GENERATION = 64 * 16 * 1000  # at most: an episode ends at 1,000 frames or earlier


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)} if tag in events.Tags()["scalars"] else {}


def curve(run: Path) -> list[dict]:
    """The run's re-evaluations: generation, real frames spent by then, re-evaluated best and mean."""
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    best, mean = scalars(events, "controller/eval_best"), scalars(events, "controller/eval_mean")
    frames = scalars(events, "controller/real_steps")
    return [
        {"generation": g, "real_frames": int(frames[g]), "reevaluated_best": best[g], "reevaluated_mean": mean[g]}
        for g in sorted(best)
        if g in frames and g in mean
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, help="the PNG (default: the first RUN/learning_curve.png)")
    args = parser.parse_args()
    figure, axis = plt.subplots(figsize=(7, 4))
    curves = {}
    for i, run in enumerate(args.runs):
        points = curves[str(run)] = curve(run)
        x, colour = [p["real_frames"] for p in points], f"C{i}"
        axis.plot(x, [p["reevaluated_best"] for p in points], "o-", color=colour, label=f"{run.name}: best")
        axis.plot(x, [p["reevaluated_mean"] for p in points], "s:", color=colour, label=f"{run.name}: mean")
    axis.plot(
        [g * HA_FRAMES_PER_GENERATION for g, _ in HA], [s for _, s in HA], "k*", markersize=12, label="Ha & Schmidhuber"
    )
    axis.set_xscale("log")
    axis.set_xlabel("real frames spent by the search")
    axis.set_ylabel("CarRacing-v3 return, re-evaluated")
    axis.axhline(900, color="grey", linestyle=":", linewidth=1)
    axis.legend(loc="lower right", fontsize="small")
    axis.set_title(", ".join(run.name for run in args.runs))
    out = args.out or args.runs[0] / "learning_curve.png"
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(json.dumps({"runs": curves, "png": str(out)}))


if __name__ == "__main__":
    main()

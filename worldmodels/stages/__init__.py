"""The pipeline's stages, one module each; each reads only what the stage before it wrote and skips itself when
complete."""

from worldmodels.stages.episodes import collect, driver, episode_store, episodes_dir
from worldmodels.stages.evaluation import check_run, evaluate, memory_id
from worldmodels.stages.memory import holdout_split, memory_config, memory_objective, train_memory
from worldmodels.stages.vision import encode, fixed_frames, image_grid, sample, train_vision, two_rows

__all__ = [
    "check_run",
    "collect",
    "driver",
    "encode",
    "episode_store",
    "episodes_dir",
    "evaluate",
    "fixed_frames",
    "holdout_split",
    "image_grid",
    "memory_config",
    "memory_id",
    "memory_objective",
    "sample",
    "train_memory",
    "train_vision",
    "two_rows",
]

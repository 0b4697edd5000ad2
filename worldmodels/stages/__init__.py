"""The pipeline's stages, one module each; each reads only what the stage before it wrote and skips itself when
complete. The stages themselves are named here, so `stages.train_vision(cfg, run, root)` reads as the pipeline does."""

from worldmodels.stages.episodes import collect, episode_store, episodes_dir
from worldmodels.stages.evaluation import check_run, evaluate, memory_id
from worldmodels.stages.memory import train_memory
from worldmodels.stages.vision import encode, sample, train_vision

__all__ = [
    "check_run",
    "collect",
    "encode",
    "episode_store",
    "episodes_dir",
    "evaluate",
    "memory_id",
    "sample",
    "train_memory",
    "train_vision",
]

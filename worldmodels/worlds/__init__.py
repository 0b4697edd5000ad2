"""Worlds the controller acts in: the real (pixel) world, M's dream, and seed 000's codebook world."""

from worldmodels.worlds.codebook import CodebookEnv
from worldmodels.worlds.real import PixelObservation, make_world

__all__ = ["CodebookEnv", "PixelObservation", "make_world"]

"""Worlds the controller acts in: the real (pixel) world."""

from .codebook import CodebookEnv
from .real import PixelObservation, make_world

__all__ = ["CodebookEnv", "PixelObservation", "make_world"]

"""Worlds the controller acts in: the real (pixel) world."""

from .real import PixelObservation, make_world

__all__ = ["PixelObservation", "make_world"]

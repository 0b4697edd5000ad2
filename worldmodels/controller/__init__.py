"""C: the linear controller and its CMA-ES search state."""

from worldmodels.controller.linear import Controller, InputScale

__all__ = ["Controller", "InputScale"]

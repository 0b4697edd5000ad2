"""worldmodels: World Models agents in PyTorch (vision V, memory M, controller C)."""

__version__ = "0.1.0"

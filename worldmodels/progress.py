"""Progress bars that show on a terminal and stay quiet in logs (CI, redirected output)."""

from tqdm import tqdm


def bar(*args, **kwargs) -> tqdm:
    """tqdm, disabled when stderr is not a terminal."""
    kwargs.setdefault("disable", None)  # tqdm's "None": off on non-TTY
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(*args, **kwargs)

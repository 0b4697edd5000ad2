"""Progress bars and messages that show on a terminal, stay quiet in logs (CI, redirected output),
and come from rank 0 alone."""

from tqdm import tqdm

from worldmodels.core.distributed import is_main


def bar(*args, **kwargs) -> tqdm:
    """tqdm, disabled when stderr is not a terminal or this is not rank 0."""
    kwargs.setdefault("disable", None if is_main() else True)  # tqdm's "None": off on non-TTY
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(*args, **kwargs)


def say(message: str) -> None:
    """A line beside the bars, from rank 0 only."""
    if is_main():
        tqdm.write(message)

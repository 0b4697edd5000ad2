"""The manual keeps its word: README.md and docs/*.md name commands that parse, recipes and pages that exist.

Every `worldmodels ...`, `python -m worldmodels ...` and `torchrun ... -m worldmodels ...` line in a fenced code
block is parsed by the command's own argparse parser (nothing runs), and a stage's recipe is loaded with the
command's `--set` overrides, so a misspelt flag, stage, recipe or recipe key fails here.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

from worldmodels import cli
from worldmodels import config as config_lib

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300
# Words in a documented command that stand for something the reader supplies (`--run RUN`), and what the parser is
# given instead. None is needed today; keep it small and explicit.
PLACEHOLDERS: dict[str, str] = {}
RECIPE_PATH = re.compile(r"envs/[\w.-]+\.toml")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def fenced_lines(text: str) -> list[tuple[int, str, bool]]:
    """Each line as (line number, text, inside a fenced code block), continuation lines joined in fences."""
    out: list[tuple[int, str, bool]] = []
    fenced = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line, False))
            continue
        start, so_far = pending if pending else (number, "")
        joined = so_far + line
        if joined.rstrip().endswith("\\"):
            pending = (start, joined.rstrip()[:-1] + " ")
            continue
        pending = None
        out.append((start, joined, True))
    return out


def worldmodels_argv(line: str) -> list[str] | None:
    """The arguments after `worldmodels` in a command line, or None when the line does not run the command."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and ASSIGNMENT.match(words[0]):  # OMP_NUM_THREADS=1 worldmodels ...
        words = words[1:]
    if words[:1] == ["worldmodels"]:
        rest = words[1:]
    elif words[:3] == ["python", "-m", "worldmodels"]:
        rest = words[3:]
    elif words[:1] == ["torchrun"] and "-m" in words and words[words.index("-m") + 1 :][:1] == ["worldmodels"]:
        rest = words[words.index("-m") + 2 :]
    else:
        return None
    return [PLACEHOLDERS.get(word, word) for word in rest]


def commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, argv) of every worldmodels command in the text's fenced code blocks."""
    found = []
    for number, line, fenced in fenced_lines(text):
        argv = worldmodels_argv(line) if fenced else None
        if argv is not None:
            found.append((number, argv))
    return found


def problem(parser, argv: list[str]) -> str | None:
    """Why the command would be refused before it ran, or None: its parse, then its recipe and overrides."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(argv)
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1]
    if args.stage == "recipes":
        return None
    overrides: list[config_lib.Override] = list(args.overrides)
    if args.stage != "recipe" and args.run is not None:
        overrides.append(("name", args.run))
    recipe = args.name if args.stage == "recipe" else args.recipe
    try:
        config_lib.load(recipe, overrides)
    except Exception as error:  # noqa: BLE001 - any refusal of the recipe is the finding
        return f"{type(error).__name__}: {error}"
    return None


def page_text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def test_every_documented_command_parses_and_its_recipe_loads():
    parser = cli.parser()
    found = [(page, number, argv) for page in PAGES for number, argv in commands(page_text(page))]
    assert len(found) >= 30, f"only {len(found)} commands found: is the extraction broken?"
    failures = [
        f"{page.relative_to(ROOT)}:{number}: worldmodels {shlex.join(argv)}\n    {why}"
        for page, number, argv in found
        if (why := problem(parser, argv)) is not None
    ]
    assert not failures, "\n".join(failures)


def test_a_misspelt_command_fails_the_check():
    parser = cli.parser()
    page = """```bash
worldmodels pipeline envs/cartpole.toml --sett vision.epochs=2
worldmodels train-controler envs/cartpole.toml
python -m worldmodels evaluate envs/cartpole.toml --set vision.epoch=2
torchrun --nproc_per_node 2 -m worldmodels train-vision envs/cartpol.toml \\
    --device cpu
worldmodels study envs/cartpole.toml --seeds 0 1   # this one is right
```
worldmodels pipeline envs/cartpole.toml --no-such-flag   (outside a fence: prose, not checked)
"""
    found = commands(page)
    assert [number for number, _ in found] == [2, 3, 4, 5, 7]
    assert [problem(parser, argv) is not None for _, argv in found] == [True, True, True, True, False]


def test_every_named_recipe_exists():
    missing = [
        f"{page.relative_to(ROOT)}: {path}"
        for page in PAGES
        for path in sorted(set(RECIPE_PATH.findall(page_text(page))))
        if not (ROOT / path).is_file()
    ]
    assert not missing, "\n".join(missing)


def test_every_relative_link_points_to_a_file():
    broken = []
    for page in PAGES:
        for number, line, fenced in fenced_lines(page_text(page)):
            for target in [] if fenced else LINK.findall(line):
                path = target.split("#", 1)[0]
                if not path or re.match(r"^[a-z]+:", path):  # an anchor on the page, or a URL
                    continue
                if not (page.parent / path).exists():
                    broken.append(f"{page.relative_to(ROOT)}:{number}: {target}")
    assert not broken, "\n".join(broken)


def test_the_readme_stays_a_manual():
    lines = len(page_text(ROOT / "README.md").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"

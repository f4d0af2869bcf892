"""The README and docs/ as a reader meets them: every relative link and anchor resolves, every ``facesynth``
command shown parses with the current command line (click's parser and types, nothing run), and the
README's quick start is what CI runs."""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but ``-`` and ``_``), spaces to ``-``."""
    text = unicodedata.normalize("NFKC", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [m[1] for m in LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    assert links(page) or page.name != "README.md"
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} -> no such file"
        if anchor:
            assert anchor in anchors(file), f"{page.name}: {target} -> no heading with that anchor in {file.name}"


def test_the_slug_is_githubs():
    assert slug("Each family at its real size, random weights (`bench_engine.py --config sd15|sdxl`)") == \
        "each-family-at-its-real-size-random-weights-bench_enginepy---config-sd15sdxl"


def commands(page: Path) -> list[str]:
    """Every ``facesynth ...`` command in the page's shell code blocks (continuation lines joined, commands
    split at ``&&``, ``;`` and ``|``), also when run as ``-m facesynth.cli`` under a launcher."""
    out = []
    for lang, block in FENCE.findall(page.read_text(encoding="utf-8")):
        if lang not in ("bash", "sh", "shell", ""):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            command: list[str] = []
            for word in [*words, ";"]:
                if word in ("&&", "||", ";", "|"):
                    if "facesynth.cli" in command:
                        command = ["facesynth", *command[command.index("facesynth.cli") + 1:]]
                    if command[:1] == ["facesynth"]:
                        out.append(shlex.join(command))
                    command = []
                else:
                    command.append(word)
    return out


def parse(line: str) -> None:
    """Parse one command line with the real command's parser and types; paths are not checked to exist."""
    from facesynth.cli import main
    from facesynth.cli.core import Location

    args = shlex.split(line, comments=True)[1:]
    while args and args[0].startswith("-"):  # global flags before the command
        args = args[1:]
    command = main.get_command(click.Context(main), args[0])
    assert command is not None, f"no command {args[0]!r}"
    ctx = click.Context(command, info_name=args[0])  # the parser alone runs no callback
    values, rest, _ = command.make_parser(ctx).parse_args(args[1:])
    assert len(rest) == 0, f"unexpected arguments {rest}"
    for param in command.params:
        value = values.get(param.name)
        if value is None or param.value_is_missing(value):
            assert not param.required, f"missing {param.opts[0]}"
        elif not isinstance(param.type, (click.Path, Location)):
            param.type_cast_value(ctx, value)  # raises BadParameter for a value of the wrong type or choice


SHOWN = [(page.name, line) for page in PAGES for line in commands(page)]


@pytest.mark.parametrize("page, line", SHOWN, ids=[f"{p}:{i}" for i, (p, _) in enumerate(SHOWN)])
def test_every_command_shown_parses(page, line):
    try:
        parse(line)
    except click.ClickException as exc:
        pytest.fail(f"{page}: `{line}`: {exc.format_message()}")


def test_a_wrong_command_does_not_parse():
    for line in ("facesynth generate emotions --out x --no-such-option", "facesynth plan",
                 "facesynth generate emotions --dtype fp64 --out x", "facesynth push demo"):
        with pytest.raises((click.ClickException, AssertionError)):
            parse(line)


def test_the_quick_start_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    quick = FENCE.search(section)[2].strip().splitlines()
    assert quick == ["facesynth generate emotions --model tiny --num-samples 32 --out demo", "pytest"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install = re.search(r"^pip install -e '\.\[test\]'", readme, re.M)
    assert install and "pip install -q -e '.[test]'" in ci
    assert quick[0] in ci and "python3 -m pytest;" in ci


def test_the_readme_reads_in_five_minutes():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250

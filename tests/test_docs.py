"""The documentation tells the truth about the CLI: every `pizzactl` command line in README.md
and docs/*.md names a command that exists and only flags that command takes; every relative
link resolves (file and #anchor); the install lines install from the repository (pizzactl is
not on PyPI) with extras that exist; the README stays a guide of at most 300 lines.

Commands and flags come from click's view of the typer app (`typer.main.get_command`, as
tests/test_cli.py does), the same object `pizzactl --help` prints, so a renamed flag fails here before it fails a user.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import typer.main

from pizzactl.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "RESULTS.md"])
CLI = typer.main.get_command(app)

SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "(", ")"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def console_lines(text: str) -> list[str]:
    """The commands typed in ```console blocks (`$ ...`, with `\\` continuations joined)."""
    lines, in_console, pending = [], False, None
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_console = stripped == "```console"
            continue
        if not in_console:
            continue
        if pending is not None:
            pending += " " + stripped
        elif stripped.startswith("$ "):
            pending = stripped[2:]
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        lines.append(pending)
        pending = None
    return lines


def inline_commands(text: str) -> list[str]:
    """`pizzactl ...` in inline code spans of the prose (outside fenced blocks)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [m for m in re.findall(r"`([^`\n]+)`", prose) if m.startswith("pizzactl ")]


def pizzactl_invocations(command_line: str) -> list[list[str]]:
    """The argument lists of every `pizzactl` in one shell line (pipes, `&&`, env prefixes)."""
    lexer = shlex.shlex(command_line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote in an example: read it word by word
        tokens = command_line.split("#")[0].split()
    found, current = [], None
    for tok in tokens:
        if tok in SHELL_OPERATORS:
            if current is not None:
                found.append(current)
            current = None
        elif current is not None:
            current.append(tok)
        elif tok == "pizzactl":
            current = []
    if current is not None:
        found.append(current)
    return found


def _option_names(command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def check_invocation(args: list[str]) -> list[str]:
    """What is wrong with `pizzactl ARGS` as documentation: unknown verbs and flags."""
    problems = []
    command = CLI
    path = ["pizzactl"]
    rest = list(args)
    while hasattr(command, "commands"):  # a group (typer may bring its own copy of click: no isinstance)
        # options of the group itself (--debug, --version) come before the verb
        while rest and rest[0].startswith("-"):
            flag = rest.pop(0).split("=")[0]
            if flag not in _option_names(command):
                problems.append(f"{' '.join(path)}: no option {flag}")
        if not rest:
            return problems
        verb = rest.pop(0)
        sub = command.commands.get(verb)
        if sub is None:
            return [*problems, f"{' '.join(path)}: no command {verb!r}"]
        command, path = sub, [*path, verb]
    known = _option_names(command)
    for tok in rest:
        if tok == "--":
            break
        if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", tok):
            flag = tok.split("=")[0]
            if flag not in known:
                problems.append(f"{' '.join(path)}: no option {flag}")
    return problems


def documented_invocations() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for line in [*console_lines(text), *inline_commands(text)]:
            found += [(_rel(doc), "pizzactl " + " ".join(args)) for args in pizzactl_invocations(line)]
    return found


INVOCATIONS = list(dict.fromkeys(documented_invocations()))


def test_docs_show_pizzactl_commands():
    """The extraction finds the commands (a regex that finds nothing would pass everything)."""
    assert len(INVOCATIONS) > 100
    readme = {cmd for doc, cmd in INVOCATIONS if doc == "README.md"}
    assert "pizzactl up --data ~/photos/pizza_not_pizza" in readme
    verbs = {cmd.split()[1] for _, cmd in INVOCATIONS if len(cmd.split()) > 1}
    documented = {name for name in CLI.commands}
    assert documented <= verbs, f"verbs no page shows: {documented - verbs}"


@pytest.mark.parametrize("doc,command", INVOCATIONS, ids=[f"{d}: {c}" for d, c in INVOCATIONS])
def test_documented_command_exists(doc, command):
    assert check_invocation(shlex.split(command)[1:]) == [], f"{doc}: {command}"


@pytest.mark.parametrize(
    "line,problem",
    [
        ("pizzactl train --data d --frobnicate 3", "pizzactl train: no option --frobnicate"),
        ("pizzactl data splot d --dest x", "pizzactl data: no command 'splot'"),
        ("pizzactl --verbose train", "pizzactl: no option --verbose"),
        ("pizzactl deploy --dry-run | pizzactl predict --dry-run x.jpg", "pizzactl predict: no option --dry-run"),
        ("PIZZACTL_PORT=1 pizzactl serve --model-port=9 --json", "pizzactl serve: no option --json"),
    ],
)
def test_a_made_up_verb_or_flag_is_caught(line, problem):
    problems = [p for args in pizzactl_invocations(line) for p in check_invocation(args)]
    assert problems == [problem]


def test_console_lines_join_continuations_and_skip_output():
    text = "```console\n$ pizzactl build \\\n    --json\nBuilt pizzactl --nope\n```\n`pizzactl up --x`\n"
    assert console_lines(text) == ["pizzactl build --json"]
    assert inline_commands(text) == ["pizzactl up --x"]


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {github_anchor(m) for m in re.findall(r"^#{1,6} +(.+)$", text, flags=re.M)}


def test_github_anchor():
    assert github_anchor("pizzactl data split") == "pizzactl-data-split"
    assert github_anchor("Configuration: settings, `pizzactl.toml`, `pizzactl config show`") == (
        "configuration-settings-pizzactltoml-pizzactl-config-show"
    )
    assert github_anchor("--dry-run") == "--dry-run"


LINKS = list(
    dict.fromkeys(
        (doc, target)
        for doc in DOCS
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S))
        if not re.match(r"[a-z]+:", target)
    )
)


@pytest.mark.parametrize("doc,target", LINKS, ids=[f"{_rel(d)} -> {t}" for d, t in LINKS])
def test_relative_link_resolves(doc, target):
    file_part, _, anchor = target.partition("#")
    dest = (doc.parent / file_part).resolve() if file_part else doc
    assert dest.exists(), f"{_rel(doc)} links to {target}, which does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{_rel(doc)} links to {target}: no such heading in {_rel(dest)}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for d, t in LINKS if d == README}
    pages = set((ROOT / "docs").glob("*.md"))
    assert pages <= linked, f"pages the README does not link: {sorted(p.name for p in pages - linked)}"


def test_readme_is_a_guide_of_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_install_lines_install_from_the_repository_with_extras_that_exist():
    """pizzactl is not on PyPI: no `pip install pizzactl`; every `[extra]` shown is in pyproject.toml."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    installs = [
        part.strip()
        for doc in DOCS
        for line in console_lines(doc.read_text())
        for part in line.split("#")[0].split("&&")
        if re.match(r"pipx? install ", part.strip())
    ]
    assert any(line.startswith("pipx install") for line in installs)
    for line in installs:
        for spec in shlex.split(line)[2:]:
            if spec.startswith("-"):
                continue
            name = re.split(r"[\[@=<>! ]", spec, maxsplit=1)[0]
            assert name != "pizzactl" or " @ " in spec, f"pizzactl is not on PyPI: {line}"
            for extra in re.findall(r"\[([\w,-]+)\]", spec) if name in ("pizzactl", ".") else []:
                assert set(extra.split(",")) <= extras, f"no such extra in pyproject.toml: {line}"

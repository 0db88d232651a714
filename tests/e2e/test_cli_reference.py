"""docs/cli.md stays complete and true.

Everything is derived from the code, so that adding an option, a choice, a command, a status, an exit code, a report
field or an environment variable fails this test until the page documents it:

* every option string and choice of every command of ``build_parser()`` (and of ``python -m defguard_entra.testing
  serve``) is in an inline code span of the command's section or of a shared-options section the command's section
  links to;
* every command has a heading of its own; every ``Status`` is a row of the statuses table, and nothing else is;
* every environment variable the package reads (string literals in ``environ.get("…")``/``environ["…"]`` and the
  like, names ``Settings.from_env`` asks for, prefixes it filters on) is in the environment variables section;
* the exit-code constants, the report's JSON fields and CSV columns, and the export manifest's columns are there, and
  the JSON and CSV examples have exactly the fields the code writes;
* links resolve and code blocks use known languages (the examples themselves run in tests/e2e/test_docs.py).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import defguard_entra
from defguard_entra import cli, config
from defguard_entra._export import MANIFEST_FIELDS
from defguard_entra.cli import build_parser
from defguard_entra.models import OUTCOME_FIELDS, Report, Status
from defguard_entra.testing.__main__ import main as emulators_main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGE = DOCS / "cli.md"
PACKAGE = Path(defguard_entra.__file__).resolve().parent
NEEDS_TENANT = "<!-- needs-tenant -->"
SERVE = "python -m defguard_entra.testing serve"
RUNNABLE = {"sh", "console"}
CONTENT = {"text", "json", "csv"}


# -- reading the page ------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<info>.*)$")
_HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<title>.+?)\s*$")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    needs_tenant: bool


@dataclass(frozen=True)
class Section:
    level: int
    title: str
    body: str  # up to the next heading of the same or a higher level: subsections included, code blocks left out

    @property
    def slug(self) -> str:
        return slug(self.title)


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def parse(text: str) -> tuple[list[Section], list[Block]]:
    """The page's sections (prose only) and fenced code blocks."""
    lines = text.splitlines()
    prose: list[str | None] = []  # None stands for a line inside a code block
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            prose.append(lines[index])
            index += 1
            continue
        fence, lang = match["fence"], match["info"].strip().split(" ")[0]
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith(fence))
        previous = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        blocks.append(Block(index + 1, lang, "\n".join(lines[index + 1 : end]) + "\n", previous == NEEDS_TENANT))
        prose.extend([None] * (end + 1 - index))
        index = end + 1
    headings = [(i, m) for i, line in enumerate(prose) if line is not None and (m := _HEADING.match(line)) is not None]
    sections = []
    for position, (start, match) in enumerate(headings):
        level = len(match["level"])
        stop = next((i for i, m in headings[position + 1 :] if len(m["level"]) <= level), len(prose))
        body = "\n".join(line for line in prose[start + 1 : stop] if line is not None)
        sections.append(Section(level, match["title"], body))
    return sections, blocks


def code_tokens(text: str) -> set[str]:
    """What inline code spans say: each span whole, and split into words (``--cloud usgov|china`` → 3 tokens)."""
    tokens: set[str] = set()
    for span in _CODE_SPAN.findall(text):
        tokens.add(span)
        tokens.update(t for t in re.split(r"[\s|,=()\[\]]+", span) if t)
    return tokens


TEXT = PAGE.read_text(encoding="utf-8")
SECTIONS, BLOCKS = parse(TEXT)


def section(title: str) -> Section:
    found = [s for s in SECTIONS if s.title == title]
    assert len(found) == 1, f"docs/cli.md needs exactly one heading {title!r}"
    return found[0]


def scope(title: str) -> set[str]:
    """Code tokens of a section and of the sections of this page it links to (the shared option groups)."""
    own = section(title)
    by_slug = {s.slug: s for s in SECTIONS}
    linked = [by_slug[a] for a in re.findall(r"\]\(#([^)\s]+)\)", own.body) if a in by_slug]
    return code_tokens("\n".join([own.body, *(s.body for s in linked)]))


# -- what the code has -----------------------------------------------------------------------------------------


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def serve_help() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        emulators_main(["serve", "--help"])
    return out.getvalue()


_ENV_NAMES = {"environ", "env", "environment"}  # how the package names an environment mapping


def _is_environment(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in _ENV_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr in _ENV_NAMES
    )


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def variables_in_source(path: Path) -> set[str]:
    """String literals read from an environment mapping: ``environ.get("X")``, ``env["X"]``, ``x.environment.get``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and _is_environment(node.func.value)
            and node.args
            and (name := _literal(node.args[0]))
        ):
            names.add(name)
        if isinstance(node, ast.Subscript) and _is_environment(node.value) and (name := _literal(node.slice)):
            names.add(name)
    return names


def prefixes_in_from_env() -> set[str]:
    """``k.startswith(("AZURE_", …))`` in ``Settings.from_env``: whole families of variables handed on."""
    tree = ast.parse(Path(config.__file__).read_text(encoding="utf-8"))
    from_env = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "from_env")
    found: set[str] = set()
    for node in ast.walk(from_env):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith":
            for arg in node.args:
                items = arg.elts if isinstance(arg, ast.Tuple) else [arg]
                found.update(v for item in items if (v := _literal(item)) and re.fullmatch(r"[A-Z][A-Z0-9]*_", v))
    return found


class _RecordingEnvironment(Mapping[str, str]):
    """An empty environment that remembers every name asked for (also names built at run time, like *_PROXY)."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def environment_variables() -> set[str]:
    recorder = _RecordingEnvironment()
    config.Settings.from_env(recorder)
    in_source = set().union(
        *(variables_in_source(p) for p in PACKAGE.glob("*.py")),  # the package, not its emulators (testing/)
    )
    return recorder.asked | in_source


# -- the tests ---------------------------------------------------------------------------------------------------


def test_the_derivations_see_what_is_known() -> None:
    """Guards the guards: if the source scan broke, the tests below would pass on an empty list."""
    assert {"help", "version"} <= {a.dest for a in build_parser()._actions}
    assert set(commands()) >= {"provision", "status", "clear", "check", "fetch-config", "export", "demo"}
    assert "--defguard-version" in serve_help()
    assert environment_variables() >= {
        "DEFGUARD_URL",
        "DEFGUARD_API_TOKEN",
        "DEFGUARD_ENTRA_GRAPH_TOKEN",
        "DEFGUARD_ENTRA_GRAPH_URL",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "AZURE_FEDERATED_TOKEN_FILE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    }
    assert "AZURE_" in prefixes_in_from_env()
    assert {s.title for s in SECTIONS} >= {"Environment variables", "Statuses", "Exit codes", "Reports", "Secrets"}


def test_every_command_has_a_heading() -> None:
    headings = {s.title for s in SECTIONS}
    for name in {*commands(), *cli.COMMANDS}:
        assert f"`{name}`" in headings, f"docs/cli.md: add a heading ### `{name}`"
    assert f"`{SERVE}`" in headings


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_and_choice_is_documented(name: str) -> None:
    documented = scope(f"`{name}`")
    missing = []
    for action in commands()[name]._actions:
        missing += [o for o in action.option_strings if o not in documented]
        missing += [f"{action.option_strings[0]} {c}" for c in action.choices or () if str(c) not in documented]
    assert not missing, (
        f"docs/cli.md: the section of `{name}` (or a shared-options section it links to) does not document, in "
        f"inline code: {', '.join(missing)}"
    )


def test_top_level_options_are_documented() -> None:
    documented = code_tokens("\n".join(s.body for s in SECTIONS))
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert option in documented, f"docs/cli.md does not document {option}"


def test_serve_options_are_documented() -> None:
    documented = scope(f"`{SERVE}`")
    text = serve_help().replace("python -m defguard_entra.testing", "")  # the program name is not an option
    options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    choices = {c for group in re.findall(r"\{([^}]+)\}", text) for c in group.split(",")}
    assert options, text
    assert not (options | choices) - documented, f"`{SERVE}` lacks {sorted((options | choices) - documented)}"


def test_every_environment_variable_is_documented() -> None:
    documented = code_tokens(section("Environment variables").body)
    missing = sorted(name for name in environment_variables() if name not in documented)
    missing += sorted(f"{p}*" for p in prefixes_in_from_env() if f"{p}*" not in documented)
    assert not missing, f"docs/cli.md, Environment variables: document {', '.join(missing)}"


def test_the_statuses_table_lists_exactly_the_statuses() -> None:
    rows = re.findall(r"^\| `(\w+)` \|", section("Statuses").body, flags=re.MULTILINE)
    assert len(rows) == len(set(rows)), "a status is listed twice"
    statuses = {s.value for s in Status}
    assert set(rows) == statuses, f"undocumented: {sorted(statuses - set(rows))}; not a status: {set(rows) - statuses}"


def test_problem_statuses_are_marked_as_exit_1() -> None:
    body = section("Statuses").body
    for status in Status:
        row = re.search(rf"^\| `{status.value}` \|.*\|(?P<exit>[^|]*)\|$", body, flags=re.MULTILINE)
        assert row is not None, status
        assert row["exit"].strip().startswith("**1**") == status.is_problem, f"{status}: exit column {row['exit']!r}"


def test_every_exit_code_is_documented() -> None:
    codes = {getattr(cli, name) for name in cli.__all__ if name.startswith("EXIT_")}
    rows = {int(c) for c in re.findall(r"^\| `(\d+)` \|", section("Exit codes").body, flags=re.MULTILINE)}
    assert codes == rows


def _report_keys() -> list[str]:
    now = dt.datetime.now(dt.UTC)
    report = Report("provision", now, now, "g", "defguard", "Defguard", ())
    return list(report.to_dict())


def test_report_fields_are_documented() -> None:
    documented = code_tokens(section("Reports").body)
    missing = [f for f in [*_report_keys(), *OUTCOME_FIELDS] if f not in documented]
    assert not missing, f"docs/cli.md, Reports: document {', '.join(missing)}"
    export = code_tokens(section("`export`").body)
    assert not [f for f in [*MANIFEST_FIELDS, "deep_link"] if f not in export]


def test_report_examples_match_the_code() -> None:
    reports = [b for b in BLOCKS if b.lang == "json" and '"users"' in b.code]
    assert len(reports) == 1, "docs/cli.md should show one JSON report"
    example = json.loads(reports[0].code)
    assert list(example) == _report_keys()
    assert all(list(user) == list(OUTCOME_FIELDS) for user in example["users"])
    assert {user["status"] for user in example["users"]} <= {s.value for s in Status}
    tables = [b for b in BLOCKS if b.lang == "csv"]
    assert len(tables) == 1, "docs/cli.md should show one CSV report"
    assert tables[0].code.splitlines()[0] == ",".join(OUTCOME_FIELDS)


def test_links_resolve() -> None:
    anchors = {s.slug for s in SECTIONS}
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", TEXT):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not target:
            assert anchor in anchors, f"docs/cli.md: no heading for #{anchor}"
            continue
        path = (DOCS / target).resolve()
        assert path.exists(), f"docs/cli.md: broken link to {target}"
        if anchor and path.suffix == ".md":
            assert anchor in {s.slug for s in parse(path.read_text(encoding="utf-8"))[0]}, f"{target}#{anchor}"


def test_code_blocks_have_known_languages() -> None:
    for block in BLOCKS:
        assert block.lang in RUNNABLE | CONTENT or block.needs_tenant, (
            f"docs/cli.md:{block.line}: a {block.lang or 'plain'!r} fence cannot be run: use sh, console, text, json "
            f"or csv, or mark it {NEEDS_TENANT}"
        )


# -- the examples run --------------------------------------------------------------------------------------------

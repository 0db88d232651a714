"""The docs run: every fenced code block in the pages below is executed, and the example notebook runs in a kernel.

Rules (stated for readers in docs/index.md):

* ``python`` blocks run as scripts in a fresh interpreter, each on its own, with the environment pointing at a fresh
  pair of emulators holding the sample organisation (what ``python -m defguard_entra.testing serve`` prints).
* ``sh`` and ``console`` blocks hold ``python -m defguard_entra …`` commands only (``console`` lines start with
  ``$``). They run in order against one fresh pair of emulators per block; a command must exit 0 unless a trailing
  ``# exits N`` comment says otherwise. ``python -m defguard_entra.testing serve`` is started, checked and stopped.
* A block right after ``<!-- needs-tenant -->`` needs a real tenant (or Defguard server) and is not executed.
* Other languages are output or data (``text``, ``json``, ``csv``) and never commands; a fence without a language
  is an error, so that nothing slips through unrun.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from defguard_entra.testing import environment, running_emulators, seed_sample_organisation

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = ("index.md", "quickstart.md", "library.md", "testing.md", "cli.md", "rollout.md", "entra-setup.md")
NEEDS_TENANT = "<!-- needs-tenant -->"
RUNNABLE = {"python", "sh", "console"}
CONTENT = {"text", "json", "csv"}
TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    code: str
    needs_tenant: bool

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


_FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<info>.*)$")


def code_blocks(page: str) -> list[Block]:
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, lang = match["fence"], match["info"].strip().split(" ")[0]
        previous = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith(fence))
        blocks.append(Block(page, index + 1, lang, "\n".join(lines[index + 1 : end]) + "\n", previous == NEEDS_TENANT))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFGUARD_", "AZURE_", "IDENTITY_", "MSI_"))}
    env.update(extra)
    env["NO_COLOR"] = "1"
    env["PYTHONWARNINGS"] = "error"  # the examples must not warn either (an unclosed client would)
    return env


def _commands(block: Block) -> Iterator[tuple[list[str], int]]:
    """Each command of a sh/console block and the exit code it must end with."""
    text = block.code.replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if block.lang == "console":
            if not line.startswith("$ "):
                continue  # output shown under a command
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        expected = re.search(r"#\s*exits\s+(\d+)", line)
        words = shlex.split(line, comments=True)
        if words[:3] != ["python", "-m", "defguard_entra"] and words[:3] != ["python", "-m", "defguard_entra.testing"]:
            pytest.fail(
                f"{block.id}: only `python -m defguard_entra …` commands can be run by the docs test; mark blocks "
                f"that need a real tenant with {NEEDS_TENANT}: {line!r}"
            )
        yield [sys.executable, *words[1:]], int(expected[1]) if expected else 0


def test_every_page_has_runnable_blocks_and_known_languages() -> None:
    assert {b.page for b in ALL_BLOCKS if not b.needs_tenant} >= {"quickstart.md", "library.md", "testing.md"}
    for block in ALL_BLOCKS:
        assert block.lang, f"{block.id}: a fence needs a language (python, sh, console, text, json, csv)"
        assert block.lang in RUNNABLE | CONTENT or block.needs_tenant, (
            f"{block.id}: {block.lang!r} blocks cannot be run; use python/sh/console or mark it {NEEDS_TENANT}"
        )


def test_the_marker_is_documented() -> None:
    assert NEEDS_TENANT in (DOCS / "index.md").read_text(encoding="utf-8")


def _runnable(lang: str) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.lang == lang and not b.needs_tenant]


@pytest.mark.parametrize("block", _runnable("python"), ids=lambda b: b.id)
def test_python_block(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    with running_emulators() as (defguard, graph, _):
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=_clean_env(environment(defguard, graph)),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Exception ignored" not in proc.stderr, f"{block.id} left something unclosed:\n{proc.stderr}"


@pytest.mark.parametrize("block", _runnable("sh") + _runnable("console"), ids=lambda b: b.id)
def test_shell_block(block: Block, tmp_path: Path) -> None:
    commands = list(_commands(block))
    assert commands, f"{block.id}: no command"
    with running_emulators() as (defguard, graph, _):
        env = _clean_env(environment(defguard, graph))
        for argv, expected in commands:
            if argv[1:4] == ["-m", "defguard_entra.testing", "serve"]:
                _serve(argv, env, tmp_path)
                continue
            proc = subprocess.run(
                argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
            )
            shown = shlex.join(["python", *argv[1:]])
            assert proc.returncode == expected, f"{block.id}: `{shown}` exited {proc.returncode}:\n{proc.stderr}"
            assert "Traceback" not in proc.stderr, f"{block.id}: `{shown}`:\n{proc.stderr}"


def _serve(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    """Start ``serve``, read what it prints up to "Ctrl-C to stop.", use the exports it gives, then Ctrl-C it."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(TIMEOUT, proc.kill)  # reading stdout below would otherwise wait forever
    watchdog.start()
    try:
        assert proc.stdout is not None
        printed: list[str] = []
        for line in proc.stdout:
            printed.append(line)
            if "Ctrl-C to stop" in line:
                break
        exports = dict(
            shlex.split(line.strip())[1].split("=", 1) for line in printed if line.strip().startswith("export ")
        )
        assert set(exports) >= {"DEFGUARD_URL", "DEFGUARD_API_TOKEN", "DEFGUARD_ENTRA_GRAPH_URL"}, printed
        check = subprocess.run(
            [sys.executable, "-m", "defguard_entra", "status", "--group-name", "VPN Users"],
            env={**env, **exports},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert check.returncode == 1, check.stderr  # the sample organisation has members that need attention
        assert "no_email" in check.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- what the pages say must stay true ---------------------------------------------------------------------------


def test_relative_links_resolve() -> None:
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (DOCS / target).resolve().exists(), f"{page}: broken link to {target}"


def test_sample_organisation_table_matches_the_seed() -> None:
    text = (DOCS / "testing.md").read_text(encoding="utf-8")
    section = text.split("## The sample organisation", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|.*\| `(\w+)` \|$", section, flags=re.MULTILINE)
    with running_emulators(seed=False) as (defguard, graph, _):
        scenario = seed_sample_organisation(defguard, graph)
    assert dict(rows) == dict(scenario.expected)


def test_readme_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documentation = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    for target in ("docs/index.md", "docs/quickstart.md", "docs/library.md", "docs/testing.md"):
        assert f"]({target})" in documentation, target
    assert "docs/notebooks/provisioning.ipynb" in documentation


# -- the example notebook, in a real Jupyter kernel --------------------------------------------------------------

NOTEBOOK = DOCS / "notebooks" / "provisioning.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], "clear the notebook's outputs before committing it"
            assert cell.execution_count is None


def test_notebook_runs_in_a_real_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nbclient drives an ipykernel started from this interpreter (a kernel spec written for the test, so that no
    installed ``python3`` spec pointing at another Python is picked up); any cell error fails the test."""
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    write_kernel_spec(tmp_path / "kernels" / "defguard-entra-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="defguard-entra-test",
        timeout=120,
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<b>provision</b> of group" in h for h in html), "the report should render as HTML"
    assert any("<th style='text-align:left'>enrollment_token</th>" in h for h in html), "and the outcome too"

"""Shared test helpers (imported by conftest and the tests)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from defguard_entra.cli import main
from defguard_entra.testing import DefguardEmulator, GraphEmulator, Scenario, environment


@dataclass
class Org:
    defguard: DefguardEmulator
    graph: GraphEmulator
    scenario: Scenario

    @property
    def env(self) -> dict[str, str]:
        return environment(self.defguard, self.graph)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def report(self, path: Any) -> dict[str, Any]:
        return json.loads(open(path, encoding="utf-8").read())  # noqa: PTH123


def run_cli(argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: str = "") -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), environ=dict(env or {}), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())

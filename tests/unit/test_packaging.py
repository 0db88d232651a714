"""The package as users see it: the exported names, a light import, and the layering of its modules."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import defguard_entra
from defguard_entra import exceptions, models

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "defguard_entra"

# -- the public API ------------------------------------------------------------------------------------------------

#: What ``__init__`` itself imports to do its job (``from __future__ import annotations``, ``from typing import
#: TYPE_CHECKING, Any``): public-looking, but not API.
INIT_PLUMBING = {"annotations", "TYPE_CHECKING", "Any"}


def _public_names() -> set[str]:
    for name in defguard_entra.__all__:
        getattr(defguard_entra, name)  # load the lazy ones
    return {
        name for name, value in vars(defguard_entra).items() if not name.startswith("_") and not inspect.ismodule(value)
    } - INIT_PLUMBING


def test_all_is_exactly_the_public_names() -> None:
    assert defguard_entra.__all__ == sorted(set(defguard_entra.__all__)), "keep __all__ sorted and unique"
    assert set(defguard_entra.__all__) == _public_names()
    assert set(defguard_entra._LAZY) <= set(defguard_entra.__all__)


def test_dir_is_all_and_version() -> None:
    assert defguard_entra.__dir__() == [*defguard_entra.__all__, "__version__"]
    assert dir(defguard_entra) == sorted([*defguard_entra.__all__, "__version__"])  # dir() sorts
    assert defguard_entra.__version__ == importlib.metadata.version("defguard-entra")


def test_all_covers_clients_service_models_exceptions_and_settings() -> None:
    exported = set(defguard_entra.__all__)
    assert {"DefguardClient", "EntraClient", "AsyncEntraClient", "ProvisioningService"} <= exported
    assert {"Settings", "GraphSettings", "AuthMode", "Cloud"} <= exported
    assert set(models.__all__) <= exported
    assert set(exceptions.__all__) <= exported
    for name in exceptions.__all__:
        assert issubclass(getattr(defguard_entra, name), defguard_entra.DefguardEntraError)


def test_all_matches_the_documented_list() -> None:
    """docs/library.md lists every exported name once, as ``- `Name` — …`` under "## Exported names"."""
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    section = text.split("\n## Exported names\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^- `([A-Za-z_]\w*)`", section, flags=re.MULTILINE)
    assert len(documented) == len(set(documented)), "a name is documented twice"
    assert sorted(documented) == sorted(defguard_entra.__all__)


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").is_file()


def test_importing_the_package_is_light() -> None:
    """``import defguard_entra`` (and its testing package) must not pull in the HTTP and Microsoft stacks."""
    heavy = ("requests", "msgraph", "msgraph_core", "kiota_", "azure", "httpx")  # ~1 s together
    code = (
        "import sys, defguard_entra, defguard_entra.testing\n"
        "from defguard_entra import Settings, Report, Secret, DefguardEntraError\n"
        f"heavy = {heavy!r}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_typing_checks_the_public_api_file() -> None:
    """tests/typing/api.py is checked by the plain ``mypy`` run (CI runs it) and never collected by pytest."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "tests/typing" in config["tool"]["mypy"]["files"]
    assert (ROOT / "tests" / "typing" / "api.py").is_file()
    assert not re.fullmatch(r"test_.*\.py|.*_test\.py", "api.py")


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run says its TEST_COMMAND line is the README's second set-up command: keep them identical."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"^TEST_COMMAND='(.+)'$", ci, flags=re.MULTILINE)
    assert match is not None
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"\n{match[1]}\n" in readme


def test_the_test_extra_installs_the_notebook_runner() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = {"nbclient", "nbformat", "ipykernel"}
    extra = {
        re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0]
        for requirement in config["project"]["optional-dependencies"]["test"]
    }
    assert wanted <= extra


# -- layering ----------------------------------------------------------------------------------------------------------

#: ``exceptions`` ← ``models`` ← ``config`` ← adapters and pure modules ← ``provisioning``, ``_desktop_client``,
#: ``_export`` ← ``cli`` (a package: its modules count as ``cli``): a module may import its own layer and the ones
#: below. Modules the table does not name are placed where their imports and importers put them: ``_version``,
#: ``_files``, ``_chunks`` and ``_defguard_auth`` (what Defguard's refusals of a token mean) are leaves; ``_retry``
#: and ``_redact`` are helpers below ``config`` (which uses ``_retry``); ``_sync`` sits with the adapters, and so do
#: the Defguard adapter's parts (``_defguard_wire`` reads answers, ``_defguard_pace`` paces and gives up) and the
#: Graph adapter's pure parts (``_batch``, ``_lookup``, ``_groups``, ``_attributes``, ``_odata``); ``provisioning``
#: (a package: its modules share one layer) reaches the clients only through its ports (checked below); ``testing``
#: is below only ``cli`` (its ``demo``). A new module must be placed here on purpose.
LAYERS = {
    "_version": 0,
    "_files": 0,
    "_chunks": 0,
    "_defguard_auth": 0,
    "exceptions": 0,
    "models": 1,
    "_retry": 2,
    "_redact": 2,
    "config": 3,
    "_defguard": 4,
    "_defguard_wire": 4,
    "_defguard_activity": 4,
    "_defguard_pace": 4,
    "_credentials": 4,
    "_sign_in_errors": 4,
    "_sign_in_record": 4,
    "_user_sign_in": 4,
    "_entra": 4,
    "_entra_sync": 4,
    "_batch": 4,
    "_lookup": 4,
    "_groups": 4,
    "_attributes": 4,
    "_odata": 4,
    "_durations": 4,
    "_sync": 4,
    "_scopes": 2,
    "provisioning": 5,
    "_desktop_client": 5,
    "_export": 5,
    "testing": 7,
    "cli": 8,
    "__main__": 9,
}

#: Imports that break the table today, reported and kept visible here rather than allowed silently. The test fails
#: when a new one appears, and also when one of these is fixed (then delete it from this set).
KNOWN_LAYER_VIOLATIONS: set[tuple[str, str]] = set()

#: Each SDK lives in one module: import prefix → the modules allowed to import it (a dotted name: that one module).
SDK_HOMES = {
    "requests": {"_defguard"},
    "msgraph": {"_entra"},
    "msgraph_core": {"_entra"},
    "kiota_": {"_entra"},
    "azure.identity": {"_credentials"},
    "humanfriendly": {"cli._render"},
}

#: The one module that reads the process environment: the CLI's entry point, which hands it to the rest.
ENVIRONMENT_READER = "cli._main"

_ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield ".".join(path.relative_to(PACKAGE).with_suffix("").parts), path


def _imports(module: str, tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every imported dotted name (relative imports made absolute), with its line; typing-only imports included."""
    package = ["defguard_entra", *module.split(".")[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = ".".join(package[: len(package) - node.level + 1])
                base = f"{prefix}.{base}" if base else prefix
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def _layer_key(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _is(name: str, prefix: str) -> bool:
    if prefix.endswith("_"):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


def _environment_reads(tree: ast.AST) -> Iterator[int]:
    aliases = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in aliases and node.attr in _ENVIRONMENT:
                yield node.lineno
        elif (
            isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in _ENVIRONMENT for a in node.names)
        ):
            yield node.lineno


def test_layering() -> None:
    problems: list[str] = []
    layer_violations: set[tuple[str, str]] = set()
    stdlib = sys.stdlib_module_names
    for module, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        key = _layer_key(module)
        where = f"{path.relative_to(ROOT)}"
        if key != "__init__" and key not in LAYERS:
            problems.append(f"{where}: not in the layering table: add it to LAYERS in {Path(__file__).name}")
        for name, line in _imports(module, tree):
            for prefix, homes in SDK_HOMES.items():
                if _is(name, prefix) and key not in homes and module not in homes:
                    problems.append(f"{where}:{line}: imports {name}; only {sorted(homes)} may")
            if key == "testing":
                own = name.startswith("defguard_entra.testing") or name.split(".")[0] in stdlib
                # the identity emulator's CA and signatures: cryptography, which azure-identity depends on
                own = own or (module.startswith("testing.identity.") and _is(name, "cryptography"))
                if not own:
                    problems.append(f"{where}:{line}: the testing package uses the standard library only, not {name}")
                continue
            if not name.startswith("defguard_entra."):
                continue
            target = _layer_key(name.removeprefix("defguard_entra."))
            if target == "cli" and key not in {"cli", "__main__"}:
                problems.append(f"{where}:{line}: imports cli; nothing imports cli (but __main__, its entry point)")
            if key in {"__init__", "__main__"} or target not in LAYERS or key not in LAYERS:
                continue  # __init__ re-exports the layers; __main__ is the entry point
            if LAYERS[target] > LAYERS[key]:
                layer_violations.add((key, target))
        if module != ENVIRONMENT_READER:
            problems.extend(
                f"{where}:{line}: reads the environment; only {ENVIRONMENT_READER} may"
                for line in _environment_reads(tree)
            )
    new = sorted(layer_violations - KNOWN_LAYER_VIOLATIONS)
    fixed = sorted(KNOWN_LAYER_VIOLATIONS - layer_violations)
    problems.extend(f"{a} imports {b}, a higher layer (see LAYERS)" for a, b in new)
    problems.extend(f"{a} no longer imports {b}: remove it from KNOWN_LAYER_VIOLATIONS" for a, b in fixed)
    assert problems == [], "\n".join(problems)


def test_the_environment_reader_is_the_cli_entry_point() -> None:
    """The one module allowed to read the environment exists and does read it (the rule is not vacuous)."""
    path = PACKAGE / (ENVIRONMENT_READER.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert list(_environment_reads(tree))


#: The client modules the service reaches only through its ports (``provisioning/_ports.py``).
CLIENT_MODULES = {"_defguard", "_entra", "_entra_sync"}


def test_provisioning_reaches_the_clients_only_through_its_ports() -> None:
    """Only ``provisioning.service`` (``from_settings`` wires the real clients) imports a client module; every
    other module of the orchestrator sees the ``Protocol``s, so the service stays testable against fakes."""
    problems = []
    for module, path in _modules():
        if not module.startswith("provisioning.") or module == "provisioning.service":
            continue
        for name, line in _imports(module, ast.parse(path.read_text(encoding="utf-8"))):
            if name.removeprefix("defguard_entra.").split(".")[0] in CLIENT_MODULES:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {name}; use the ports in _ports.py")
    assert problems == []
    assert any(m == "provisioning._ports" for m, _ in _modules())


def test_layering_test_sees_imports() -> None:
    """The checker itself: relative imports resolve, and typing-only and function-level imports count."""
    tree = ast.parse(
        "from . import _odata\nfrom ..models import Report\nif TYPE_CHECKING:\n    import requests\n"
        "def f():\n    from azure.identity import DefaultAzureCredential\n    return os.environ\n"
    )
    names = {name for name, _ in _imports("testing._graph", tree)}
    assert {"defguard_entra.testing._odata", "defguard_entra.models", "requests", "azure.identity"} <= names
    assert list(_environment_reads(tree)) == [7]

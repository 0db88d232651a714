"""The sign-in of every recipe in docs/scheduling.md, run as the recipe runs it: the CLI in a subprocess with exactly
the variables the recipe sets, signing in with the real azure-identity and MSAL against the identity emulator
(HTTPS on loopback), the strict Graph emulator (it judges the JWT's claims) and the Defguard emulator.

Each recipe is defined once here (:data:`RECIPES`): its ``--auth`` mode, the variables it sets, how the Defguard
API token arrives. The doc's own code blocks are read back and must show the same variables, mode and flags, and
the permissions each recipe lists must be what the command asks for (``_scopes.py``), so that neither can drift.

Test-only plumbing, never part of a recipe (:data:`PLUMBING`): ``AZURE_AUTHORITY_HOST`` and ``REQUESTS_CA_BUNDLE``
point azure-identity at the identity emulator instead of ``login.microsoftonline.com`` and the system's CAs (the
Kubernetes recipe's webhook sets ``AZURE_AUTHORITY_HOST`` itself: there it is the recipe's),
``DEFGUARD_ENTRA_GRAPH_URL`` at the Graph emulator, ``PATH`` and ``HOME`` to run at all.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from defguard_entra._scopes import GROUP_SCOPES, OPTIONAL_SCOPES, Command, scopes_for
from defguard_entra.testing import DefguardEmulator, GraphEmulator, IdentityEmulator, make_certificate

#: The command every recipe runs.
COMMAND: Command = "sync"
#: The flags every unattended recipe passes besides ``--auth``.
UNATTENDED: tuple[str, ...] = ("--no-progress", "--log-format", "json")

DOC = Path(__file__).resolve().parents[2] / "docs" / "scheduling.md"
GROUP = "DgProvisioning"
MEMBERS = ("ada", "bruno", "chiara")
RUN_TIMEOUT = 120
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
GITHUB_SUBJECT = "repo:ORG/REPO:ref:refs/heads/main"
AKS_ISSUER = "https://westeurope.oic.prod-aks.azure.com/00000000-0000-0000-0000-000000000000/cluster/"
AKS_SUBJECT = "system:serviceaccount:vpn:defguard-entra"
PLUMBING = frozenset({"PATH", "HOME", "AZURE_AUTHORITY_HOST", "REQUESTS_CA_BUNDLE", "DEFGUARD_ENTRA_GRAPH_URL"})
_VARIABLE = re.compile(r"\b(?:AZURE|DEFGUARD|IDENTITY|MSI)_[A-Z0-9_]+\b")


@dataclass(frozen=True)
class Recipe:
    """What one recipe sets: its sign-in, its variables, and whether the API token comes as a file."""

    auth: str
    sign_in: str  # federated, managed-identity, pem, pfx
    variables: frozenset[str]
    token_file: bool = False
    issuer: str = ""
    subject: str = ""


RECIPES = {
    "github-actions": Recipe(
        "environment",
        "federated",
        frozenset(
            {"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE", "DEFGUARD_URL", "DEFGUARD_API_TOKEN"}
        ),
        issuer=GITHUB_ISSUER,
        subject=GITHUB_SUBJECT,
    ),
    "azure-functions": Recipe(
        "managed-identity",
        "managed-identity",
        frozenset(
            {"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "DEFGUARD_URL", "DEFGUARD_API_TOKEN", "DEFGUARD_ENTRA_STATE_DIR"}
        ),
    ),
    "kubernetes": Recipe(
        "environment",
        "federated",
        frozenset(
            {
                "AZURE_CLIENT_ID",
                "AZURE_TENANT_ID",
                "AZURE_FEDERATED_TOKEN_FILE",
                "AZURE_AUTHORITY_HOST",
                "DEFGUARD_URL",
                "DEFGUARD_ENTRA_STATE_DIR",
            }
        ),
        token_file=True,
        issuer=AKS_ISSUER,
        subject=AKS_SUBJECT,
    ),
    "systemd": Recipe(
        "environment",
        "pem",
        frozenset(
            {
                "AZURE_TENANT_ID",
                "AZURE_CLIENT_ID",
                "AZURE_CLIENT_CERTIFICATE_PATH",
                "DEFGUARD_URL",
                "DEFGUARD_ENTRA_STATE_DIR",
            }
        ),
        token_file=True,
    ),
    "task-scheduler": Recipe(
        "environment",
        "pfx",
        frozenset(
            {
                "AZURE_TENANT_ID",
                "AZURE_CLIENT_ID",
                "AZURE_CLIENT_CERTIFICATE_PATH",
                "DEFGUARD_URL",
                "DEFGUARD_ENTRA_STATE_DIR",
            }
        ),
        token_file=True,
    ),
}

#: What the app of every recipe is granted: exactly the permissions the command needs, not the optional one, so
#: that the runs prove the required list is enough.
REQUIRED = frozenset(scopes_for(COMMAND))


# -- the doc, read back -------------------------------------------------------------------------------------------


def _sections() -> dict[str, str]:
    """Each recipe's section of the page (from its ``## `` heading to the next), by its ``recipe:`` marker; the
    shared section under ``shared``."""
    text = DOC.read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for section in re.split(r"^(?=## )", text, flags=re.MULTILINE):
        marker = re.search(r"<!-- recipe: ([\w-]+) -->", section)
        if marker:
            found[marker[1]] = section
        elif section.startswith("## What every recipe shares"):
            found["shared"] = section
    return found


def _code(section: str) -> str:
    """The text of every fenced code block in ``section``."""
    return "\n".join(re.findall(r"^```[\w-]*\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL))


def _permissions(section: str) -> tuple[set[str], set[str]]:
    """The required and optional permissions on the section's ``**Permissions.**`` line."""
    (line,) = [x for x in section.splitlines() if x.startswith("**Permissions.**")]
    required, _, optional = line.partition("optional:")
    return set(re.findall(r"`([\w.]+)`", required)), set(re.findall(r"`([\w.]+)`", optional))


def test_the_page_has_exactly_these_recipes() -> None:
    sections = _sections()
    assert set(sections) - {"shared"} == set(RECIPES)
    assert "shared" in sections


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_doc_sets_what_the_test_runs(name: str) -> None:
    """The recipe's code blocks name exactly the variables the run below sets, its ``--auth`` mode alone, the
    command, the JSON log format, and ``--api-token-file`` exactly when the token comes as a file."""
    recipe, code = RECIPES[name], _code(_sections()[name])
    assert set(_VARIABLE.findall(code)) == recipe.variables
    assert set(re.findall(r"--auth[\"',\s]+([a-z-]+)", code)) == {recipe.auth}
    # ``python -m defguard_entra sync --group-name …``, as a list in Python, or the container's ``args: ["sync", …]``
    assert re.search(r"(?:defguard_entra|args:)[\"',\s\[]+sync[\"',\s]+--group-name[\"',\s]+" + GROUP, code), name
    assert re.search(r"--log-format[\"',\s]+json", code), name
    assert ("--api-token-file" in code) is recipe.token_file
    assert "--no-progress" in code
    if recipe.issuer:
        assert recipe.subject in code
        assert "api://AzureADTokenExchange" in code
    if name == "github-actions":
        assert GITHUB_ISSUER in code
        assert "id-token: write" in code
        assert "concurrency:" in code
    if name == "kubernetes":
        for needed in ('azure.workload.identity/use: "true"', "azure.workload.identity/client-id", "Forbid"):
            assert needed in code


@pytest.mark.parametrize("name", ["shared", *sorted(RECIPES)])
def test_the_permissions_listed_are_what_the_command_asks_for(name: str) -> None:
    """Every recipe (and the shared section) lists the command's scopes as required and the optional one as
    optional; the grant script grants exactly those; ``--group-source entra`` adds the group scope."""
    section = _sections()[name]
    required, optional = _permissions(section)
    assert required == set(scopes_for(COMMAND))
    assert optional == set(OPTIONAL_SCOPES)
    if name == "shared":
        (loop,) = [x for x in _code(section).splitlines() if x.startswith("for permission in")]
        assert set(loop.removeprefix("for permission in").removesuffix("; do").split()) == required | optional
        added = re.search(r"With `--group-source entra`.*?add ((?:`[\w.]+`(?:, )?)+)", section, flags=re.DOTALL)
        assert added is not None
        assert set(re.findall(r"`([\w.]+)`", added[1])) == set(scopes_for(COMMAND, "entra")) - required
        assert set(GROUP_SCOPES) == set(scopes_for(COMMAND, "entra")) - required


# -- each recipe's sign-in, for real ----------------------------------------------------------------------------


@dataclass
class World:
    idp: IdentityEmulator
    graph: GraphEmulator
    defguard: DefguardEmulator
    entra_ids: dict[str, str]
    home: Path
    secrets: set[str] = field(default_factory=set)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A group whose members all get a token (so a good run exits 0)."""
    with (
        IdentityEmulator() as idp,
        GraphEmulator(identity=idp, strict=True) as graph,
        DefguardEmulator("2.0", enrollment_url="https://enroll.example.com") as defguard,
    ):
        graph.define_attribute_set("Defguard")
        entra_ids = {}
        for name in MEMBERS:
            defguard.add_user(name, email=f"{name}@example.com")
            entra_ids[name] = graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
        defguard.add_group(GROUP, MEMBERS)
        yield World(idp, graph, defguard, entra_ids, tmp_path, {defguard.admin_token})


def _recipe_env(world: World, recipe: Recipe, *, subject: str | None = None) -> tuple[dict[str, str], list[str], str]:
    """The recipe's variables (and nothing else but the plumbing), the extra arguments, and the client id the
    sign-in must be for."""
    idp, home = world.idp, world.home
    values: dict[str, str] = {
        "DEFGUARD_URL": world.defguard.url,
        "DEFGUARD_API_TOKEN": world.defguard.admin_token,
        "DEFGUARD_ENTRA_STATE_DIR": str(home / "state"),
        "AZURE_TENANT_ID": idp.tenant_id,
        # Kubernetes: the webhook sets the cloud's sign-in endpoint; Azure's cloud tables write it with a trailing
        # slash (``https://login.microsoftonline.com/``), which must work too (not verified which form it writes).
        "AZURE_AUTHORITY_HOST": idp.authority + "/",
    }
    if recipe.sign_in == "managed-identity":
        identity = idp.add_managed_identity(roles=REQUIRED)
        values |= idp.managed_identity_environment()
        world.secrets.add(values["IDENTITY_HEADER"])
        client_id = identity.client_id
    else:
        cert = make_certificate()
        app = idp.add_app("defguard-entra-sync", certificate=cert, roles=REQUIRED)
        client_id = values["AZURE_CLIENT_ID"] = app.client_id
        if recipe.sign_in == "federated":
            idp.add_federated_credential(app.client_id, recipe.issuer, recipe.subject)
            token = idp.federated_token(subject or recipe.subject, issuer=recipe.issuer)
            (home / "federated-token").write_text(token, encoding="utf-8")
            values["AZURE_FEDERATED_TOKEN_FILE"] = str(home / "federated-token")
            world.secrets.add(token)
        elif recipe.sign_in == "pem":
            values["AZURE_CLIENT_CERTIFICATE_PATH"] = str(cert.write_pem(home / "graph-app.pem"))
        else:
            values["AZURE_CLIENT_CERTIFICATE_PATH"] = str(cert.write_pfx(home / "graph-app.pfx"))
    extra: list[str] = []
    if recipe.token_file:
        (home / "defguard-api-token").write_text(world.defguard.admin_token + "\n", encoding="utf-8")
        extra = ["--api-token-file", str(home / "defguard-api-token")]
    env = {name: values[name] for name in recipe.variables}
    env |= {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "REQUESTS_CA_BUNDLE": idp.ca_file,
        "DEFGUARD_ENTRA_GRAPH_URL": world.graph.url,
    }
    env.setdefault("AZURE_AUTHORITY_HOST", idp.authority)
    assert set(env) - PLUMBING == recipe.variables - PLUMBING
    return env, extra, client_id


def _run(env: dict[str, str], extra: list[str], auth: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "defguard_entra", COMMAND, "--group-name", GROUP, "--auth", auth, *UNATTENDED]
    return subprocess.run(
        [*argv, *extra],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,  # unattended: no terminal
        timeout=RUN_TIMEOUT,
        check=False,
    )


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def _bearers(world: World) -> set[str]:
    return {r.headers["authorization"].partition(" ")[2] for r in world.graph.requests if "authorization" in r.headers}


def _assert_bearers_only_to_graph(world: World, bearers: set[str]) -> None:
    for request in [*world.defguard.requests, *world.idp.requests]:
        seen = " ".join(request.headers.values()) + request.body.decode("utf-8", "replace") + request.query
        assert not any(b in seen for b in bearers), f"a Graph token reached {request.raw_path}"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_recipe_signs_in_and_provisions_every_member(world: World, name: str) -> None:
    """Exit 0 with the recipe's variables only; every member holds the token Defguard accepts; Graph saw only app
    tokens the identity emulator issued, for the recipe's client id, with the granted ``roles`` and no ``scp``;
    the bearer went nowhere else; nothing secret was printed."""
    recipe = RECIPES[name]
    env, extra, client_id = _recipe_env(world, recipe)
    result = _run(env, extra, recipe.auth)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    assert "Traceback" not in said
    for member in MEMBERS:
        stored = world.graph.attributes(world.entra_ids[member])["Defguard"]
        assert stored["EnrollmentToken"] == world.defguard.current_token(member), member
        assert stored["EnrollmentUrl"] == "https://enroll.example.com/"

    bearers = _bearers(world)
    assert bearers
    issued = {c["uti"] for c in world.idp.issued}
    for bearer in bearers:
        claims = _claims(bearer)
        assert claims["uti"] in issued
        assert claims["idtyp"] == "app"
        assert claims["appid"] == client_id
        assert set(claims["roles"]) == REQUIRED
        assert "scp" not in claims
    _assert_bearers_only_to_graph(world, bearers)

    grants = [dict(parse_qsl(r.body.decode())) for r in world.idp.requests_to("token")]
    if recipe.sign_in == "managed-identity":
        assert grants == []  # the App Service endpoint, not the token endpoint
        assert world.idp.request_counts["managed-identity"] >= 1
    else:
        assert {g["grant_type"] for g in grants} == {"client_credentials"}
        assertions = {g.get("client_assertion") for g in grants}
        if recipe.sign_in == "federated":
            assert assertions == {Path(env["AZURE_FEDERATED_TOKEN_FILE"]).read_text(encoding="utf-8")}
        assert "client_secret" not in {k for g in grants for k in g}

    secrets = world.secrets | bearers | {world.defguard.current_token(m) or "" for m in MEMBERS}
    for secret in secrets:
        assert secret not in said, f"{name} printed a secret"
    assert "PRIVATE KEY" not in said


@pytest.mark.parametrize(
    ("name", "subject"),
    [("github-actions", "repo:ORG/REPO:pull_request"), ("kubernetes", "system:serviceaccount:default:default")],
    ids=["github-pull-request", "kubernetes-other-service-account"],
)
def test_a_token_for_another_subject_is_refused_before_anything_is_minted(
    world: World, name: str, subject: str
) -> None:
    """The federated credential names one subject: a pull request's job, or another service account, presents
    another, Entra answers AADSTS70021, and the run stops with one line (exit 3) before any token is minted."""
    recipe = RECIPES[name]
    env, extra, _ = _recipe_env(world, recipe, subject=subject)
    result = _run(env, extra, recipe.auth)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]  # --log-format json: every line an event
    errors = [e["message"] for e in events if e["event"] == "log" and e["level"] == "error"]
    assert len(errors) == 1, result.stderr
    assert "AADSTS70021" in errors[0]
    assert [e["exit_code"] for e in events if e["event"] == "run"] == [3]
    assert world.defguard.issued_count == 0
    assert not _bearers(world)
    for secret in world.secrets:
        assert secret not in result.stdout + result.stderr


#: Stands in for the Functions host: ``azure.functions`` (not installed) with a ``timer_trigger`` that only records,
#: then the recipe's ``function_app.py`` is run and its function called once, as the timer would.
_FUNCTIONS_HOST = """
import logging, runpy, sys, types
import azure

stub = types.ModuleType("azure.functions")
class FunctionApp:
    def timer_trigger(self, **trigger):
        def register(function):
            function.trigger = trigger
            return function
        return register
stub.FunctionApp, stub.TimerRequest = FunctionApp, object
azure.functions = sys.modules["azure.functions"] = stub
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
app = runpy.run_path(sys.argv[1])
print("trigger:", app["defguard_sync"].trigger)
app["defguard_sync"](None)
"""


def test_the_function_app_runs_the_command(world: World) -> None:
    """The Azure Functions recipe's own ``function_app.py``, called as its timer would call it, with the app's
    environment (the platform's ``IDENTITY_*``, the app settings): the child process finds the packages, signs in
    with the managed identity, provisions every member, and its events reach the function's log."""
    (block,) = re.findall(r"^```python\n(.*?)^```", _sections()["azure-functions"], flags=re.MULTILINE | re.DOTALL)
    code = block.replace('"sync",', f'"{COMMAND}",').replace("/tmp/defguard-entra", str(world.home / "state"))
    if "--log-format" not in UNATTENDED:  # until ``sync`` lands
        code = code.replace('    "--log-format",\n    "json",\n', "")
    (world.home / "function_app.py").write_text(code, encoding="utf-8")
    env, extra, client_id = _recipe_env(world, RECIPES["azure-functions"])
    del env["DEFGUARD_ENTRA_STATE_DIR"]  # the function sets it
    host = subprocess.run(
        [sys.executable, "-c", _FUNCTIONS_HOST, str(world.home / "function_app.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert host.returncode == 0, host.stdout + host.stderr
    assert extra == []
    assert "'schedule': '0 17 */4 * * *'" in host.stdout
    for member in MEMBERS:
        stored = world.graph.attributes(world.entra_ids[member])["Defguard"]
        assert stored["EnrollmentToken"] == world.defguard.current_token(member), member
    assert {_claims(b)["appid"] for b in _bearers(world)} == {client_id}
    assert (world.home / "state").is_dir()  # the state directory the function chose
    for secret in world.secrets | _bearers(world):
        assert secret not in host.stdout + host.stderr

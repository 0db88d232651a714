"""``AZURE_AUTHORITY_HOST`` (azure-identity's own variable) into the settings: validated, and instance discovery
off for a host that is not one of Microsoft's (MSAL 1.39 ``authority.py`` ``WELL_KNOWN_AUTHORITY_HOSTS``)."""

from __future__ import annotations

import pytest

from defguard_entra import ConfigurationError, Settings
from helpers import run_cli


def test_the_variable_replaces_the_clouds_authority() -> None:
    graph = Settings.from_env({"AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/"}).graph
    assert graph.authority == "https://login.microsoftonline.us"
    assert graph.known_authority
    assert Settings.from_env({}).graph.authority == "login.microsoftonline.com"
    private = Settings.from_env({"AZURE_AUTHORITY_HOST": "https://127.0.0.1:8443"}).graph.validate()
    assert not private.known_authority


@pytest.mark.parametrize("value", ["http://login.example.com", "https://login.example.com/tenant", "https://"])
def test_a_bad_value_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"AZURE_AUTHORITY_HOST .* must be an https:// sign-in host"):
        Settings.from_env({"AZURE_AUTHORITY_HOST": value}).validate()


def test_the_cli_names_a_bad_value_in_one_line_before_any_request() -> None:
    env = {"AZURE_AUTHORITY_HOST": "http://login.example.com", "DEFGUARD_URL": "http://127.0.0.1:9"}
    result = run_cli(["check", "--group-name", "VPN", "--auth", "environment"], env)
    assert result.code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "AZURE_AUTHORITY_HOST" in result.stderr
    assert "Traceback" not in result.stderr

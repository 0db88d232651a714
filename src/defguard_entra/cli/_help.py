"""The help texts of the commands that read and write a group's attributes: what each does, its statuses and its
exit codes (``docs/cli.md`` documents the same; ``tests/e2e/test_cli_reference.py`` keeps them together)."""

from __future__ import annotations

from ..models import Status

__all__ = [
    "CHECK_DESCRIPTION",
    "CHECK_EPILOG",
    "CHECK_HELP",
    "CLEAR_DESCRIPTION",
    "CLEAR_EPILOG",
    "CLEAR_HELP",
    "DEMO_EPILOG",
    "PROVISION_EPILOG",
    "STATUS_DESCRIPTION",
    "STATUS_EPILOG",
    "STATUS_HELP",
    "SYNC_DESCRIPTION",
    "SYNC_EPILOG",
    "SYNC_HELP",
    "statuses",
]


def statuses(meanings: dict[Status, str]) -> str:
    """A command's statuses for its epilog, in the one order of statuses everywhere (that of ``Status``)."""
    return ", ".join(f"{s.value} ({meanings[s]})" if meanings[s] else s.value for s in Status if s in meanings)


STATUS_HELP = "where each member stands: Defguard state, Entra match, stored attributes (read-only)"
STATUS_DESCRIPTION = (
    "Show, for every member of a group, the Defguard user's state (active, enrolled), the "
    "matching Entra user, and whether EnrollmentToken and EnrollmentUrl are stored (token masked). "
    "Read-only."
)

CLEAR_HELP = "set EnrollmentToken and EnrollmentUrl to null for enrolled members (or all with --all)"
CLEAR_DESCRIPTION = (
    "Remove the stored enrollment token and URL (an enrollment token in a directory attribute is a "
    "secret) for members who are already enrolled in Defguard, or for every member with --all."
)

CHECK_HELP = "verify a setup end to end without changing anything; a fix hint for each failure"
CHECK_DESCRIPTION = (
    "Check that provision can run: Defguard reachable (and its version), the API token honoured "
    "(license), valid and an admin's, the group found and its size; Microsoft Graph sign-in, permission to "
    "read users, the attribute set and both attributes defined as single-valued String without "
    "predefined-values-only, and the permissions to write and read them."
)

PROVISION_EPILOG = (
    "Statuses: "
    + statuses(
        {
            Status.PROVISIONED: "a token minted and stored with the URL",
            Status.ALREADY_ENROLLED: "has a device: skipped",
            Status.DISABLED: "disabled in Defguard: skipped",
            Status.ENTRA_DISABLED: "the Entra account is disabled: skipped",
            Status.NO_EMAIL: "",
            Status.NOT_FOUND: "no Entra user with that address",
            Status.AMBIGUOUS: "",
            Status.NOT_IN_DEFGUARD: "--group-source entra",
            Status.FAILED: "",
            Status.PLANNED: "--dry-run",
            Status.EXISTING: "--only-missing: already stored",
            Status.INTERRUPTED: "",
        }
    )
    + ". Exit codes: 0 no member needs attention, 1 a member is no_email, not_found, ambiguous, not_in_defguard or "
    "failed, 2 usage error, 3 cannot run (nothing minted), 130 interrupted (run again with --only-missing to finish)."
)
DEMO_EPILOG = (
    "The demo runs provision, so its statuses are provision's; the sample organisation has a member of each of: "
    + statuses(
        dict.fromkeys(
            (
                Status.PROVISIONED,
                Status.ALREADY_ENROLLED,
                Status.DISABLED,
                Status.NO_EMAIL,
                Status.NOT_FOUND,
                Status.AMBIGUOUS,
            ),
            "",
        )
    )
    + ". Exit codes: 0 the sample organisation ended exactly as expected (provision itself exits 1 on it), 1 it did "
    "not, 2 usage error, 3 cannot run, 130 interrupted."
)
STATUS_EPILOG = (
    "Statuses: "
    + statuses(
        {
            Status.NO_EMAIL: "",
            Status.NOT_FOUND: "",
            Status.AMBIGUOUS: "",
            Status.NOT_IN_DEFGUARD: "",
            Status.FAILED: "",
            Status.INTERRUPTED: "",
            Status.STALE: "a run that did not finish minted a token: what is stored may be dead",
            Status.NOT_SET: "nothing stored, or this sign-in may not read the attributes: Graph answers both the same "
            "way",
            Status.SET: "EnrollmentToken and EnrollmentUrl stored",
            Status.PARTIAL: "only one of them: provision --only-missing re-provisions it",
        }
    )
    + ". The columns active and enrolled are the Defguard user's state; tokens are masked (first 4 characters). "
    "Exit codes: 0 every member looked up, 1 some member could not be (no_email, not_found, ambiguous, "
    "not_in_defguard, failed, stale), 2 usage error, 3 cannot run, 130 interrupted."
)
CLEAR_EPILOG = (
    "Statuses: "
    + statuses(
        {
            Status.NOT_FOUND: "also for a member without e-mail",
            Status.AMBIGUOUS: "",
            Status.FAILED: "",
            Status.PLANNED: "--dry-run",
            Status.INTERRUPTED: "",
            Status.STALE: "",
            Status.CLEARED: "",
            Status.NOT_SET: "nothing stored",
            Status.KEPT: "not enrolled in Defguard yet, without --all",
        }
    )
    + ". Only EnrollmentToken and EnrollmentUrl are set to null; other attributes of the set are left alone. "
    "Exit codes: 0 done, 1 a member is failed, not_found, ambiguous or stale, 2 usage error, 3 cannot run, "
    "130 interrupted."
)
CHECK_EPILOG = (
    "Nothing is changed: no token is minted and no attribute written. Write (and read) permission on the "
    "attributes is judged from the Graph access token's claims when it is a JWT (roles, scp, wids); otherwise it "
    "is reported 'not verified' (Graph shows it only by writing). Each line is ok, FAIL (with its fix), warn (not "
    "verified, with a hint) or skip. Exit codes: 0 ready (warnings allowed), 2 usage error, 3 not ready."
)

SYNC_HELP = "keep every member's stored token true over time: mint, refresh, clear (idempotent, for schedulers)"
SYNC_DESCRIPTION = (
    "Read the group, Defguard's records and what Entra stores, plan, and apply the plan: a member without a device "
    "and without a usable stored token gets one (as provision mints); a stored token that expires within "
    "--refresh-before is replaced; a member who has enrolled a device, is disabled in Defguard or Entra, or left "
    "the group (an outsider who still holds this instance's attributes) is cleared. Running it twice in a row "
    "changes nothing the second time."
)
SYNC_EPILOG = (
    "Example: python -m defguard_entra sync --group-name VPN --report sync.json, nightly; or "
    "python -m defguard_entra sync --group-name VPN --watch 1h --log-format json in a container. "
    "Each member gets an action: mint, refresh, clear, keep (its stored token is usable) or none; the summary "
    "counts members per status and per action. A plan with more destructive changes (clears, and re-mints that "
    "replace a stored token) than --max-changes changes nothing, prints what it would do and exits 4. "
    "Exit codes: 0 every member's attributes are true, 1 a member needs attention, 2 usage error, 3 cannot run, "
    "4 held by --max-changes, 130 interrupted; with --watch, a cycle that cannot run is logged and tried again at "
    "the next interval."
)

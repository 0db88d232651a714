"""What the emulated tenant knows: app registrations, users, managed identities, federated credentials, and the
refusals a test asks for. Plain records and the registration API; the grants live in :mod:`._grants`.

Permissions follow Entra's model ("Overview of permissions and consent",
https://learn.microsoft.com/entra/identity-platform/permissions-consent-overview): an app holds *application
permissions* (app roles on Microsoft Graph, granted by admin consent: the ``roles`` claim of app-only tokens) and
*delegated permissions* consented for it (the ``scp`` claim of a user's token); a user holds directory roles (their
template ids are the ``wids`` claim).
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509

from ._pki import AppCertificate

__all__ = ["App", "Federated", "Identity", "Refusal", "Registry", "UserAccount"]

#: Microsoft Graph's application id: a scope may name it instead of the Graph root.
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
#: The Graph roots of the national clouds ("National cloud deployments", learn.microsoft.com/graph/deployments).
GRAPH_ROOTS = (
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
)
#: Workload identity's audience ("Workload identity federation", learn.microsoft.com/entra/workload-id).
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"


@dataclass(frozen=True)
class Federated:
    """A federated identity credential: tokens from ``issuer`` about ``subject`` for ``audience``."""

    issuer: str
    subject: str
    audience: str = EXCHANGE_AUDIENCE


@dataclass
class App:
    """An app registration and its service principal in the tenant."""

    client_id: str
    name: str
    object_id: str
    secrets: list[str] = field(default_factory=list)
    certificates: list[x509.Certificate] = field(default_factory=list)
    roles: set[str] = field(default_factory=set)  # application permissions on Graph (admin-consented)
    consented: set[str] = field(default_factory=set)  # delegated permissions on Graph consented for all users
    federated: list[Federated] = field(default_factory=list)


@dataclass
class UserAccount:
    upn: str
    oid: str
    name: str
    directory_roles: set[str] = field(default_factory=set)  # role template ids (``wids``)


@dataclass
class Identity:
    """A managed identity: its client id (user-assigned) and the object id of its service principal."""

    client_id: str
    object_id: str
    roles: set[str] = field(default_factory=set)
    system_assigned: bool = True


@dataclass
class Refusal:
    """A refusal a test asked for: the next ``times`` matching token requests answer with AADSTS ``code``."""

    code: int
    grant_type: str | None = None
    client_id: str | None = None
    times: int | None = 1  # None: every request from now on


class Registry:
    """The registration API; every method is thread-safe (``self.lock``)."""

    lock: threading.RLock

    def __init__(self, tenant_id: str | None = None) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.domains: set[str] = set()
        self.apps: dict[str, App] = {}
        self.users: dict[str, UserAccount] = {}  # by lower-cased UPN
        self.identities: list[Identity] = []
        self.identity_header = secrets.token_urlsafe(24)  # App Service's IDENTITY_HEADER
        self.refusals: list[Refusal] = []

    def add_app(
        self,
        name: str = "defguard-entra",
        *,
        client_id: str | None = None,
        secret: str | None = None,
        certificate: AppCertificate | x509.Certificate | None = None,
        roles: Iterable[str] = (),
        delegated: Iterable[str] = (),
        federated: Iterable[Federated] = (),
    ) -> App:
        """Register an app: its secret and/or certificate, the Graph application permissions granted to it
        (``roles``) and the delegated Graph permissions consented for it (``delegated``)."""
        cert = certificate.certificate if isinstance(certificate, AppCertificate) else certificate
        app = App(
            client_id or str(uuid.uuid4()),
            name,
            str(uuid.uuid4()),
            [secret] if secret else [],
            [cert] if cert is not None else [],
            set(roles),
            set(delegated),
            list(federated),
        )
        with self.lock:
            self.apps[app.client_id] = app
        return app

    def add_user(
        self,
        upn: str,
        *,
        oid: str | None = None,
        name: str | None = None,
        directory_roles: Iterable[str] = (),
    ) -> UserAccount:
        """A user who can sign in; ``oid`` should be the user's id in the Graph emulator (``/me`` and the claims
        ``check`` reads follow it); ``directory_roles`` are role template ids or built-in role names."""
        user = UserAccount(upn, oid or str(uuid.uuid4()), name or upn.partition("@")[0], _role_ids(directory_roles))
        with self.lock:
            self.users[upn.lower()] = user
            self.domains.add(upn.rpartition("@")[2].lower())
        return user

    def add_managed_identity(
        self, *, client_id: str | None = None, roles: Iterable[str] = (), system_assigned: bool = True
    ) -> Identity:
        """A managed identity the App Service-style endpoint answers for (the system-assigned one answers
        requests that name no identity)."""
        identity = Identity(client_id or str(uuid.uuid4()), str(uuid.uuid4()), set(roles), system_assigned)
        with self.lock:
            self.identities.append(identity)
        return identity

    def add_federated_credential(self, client_id: str, issuer: str, subject: str) -> Federated:
        credential = Federated(issuer, subject)
        with self.lock:
            self.apps[client_id].federated.append(credential)
        return credential

    def refuse(
        self, code: int, *, grant_type: str | None = None, client_id: str | None = None, times: int | None = 1
    ) -> None:
        """Answer the next ``times`` token requests (of ``grant_type``, from ``client_id``; ``None``: any) with
        Entra's refusal ``code`` (an AADSTS number from :data:`~._errors.REFUSALS`)."""
        from ._errors import REFUSALS  # noqa: PLC0415 - one table, imported where it is read

        if code not in REFUSALS:
            raise ValueError(f"no AADSTS{code} in the emulator's table: {sorted(REFUSALS)}")
        with self.lock:
            self.refusals.append(Refusal(code, grant_type, client_id, times))

    def _take_refusal(self, grant_type: str, client_id: str) -> int | None:
        with self.lock:
            for refusal in self.refusals:
                if refusal.grant_type not in {None, grant_type} or refusal.client_id not in {None, client_id}:
                    continue
                if refusal.times is not None:
                    refusal.times -= 1
                    if refusal.times <= 0:
                        self.refusals.remove(refusal)
                return refusal.code
        return None

    def knows_tenant(self, tenant: str) -> bool:
        lowered = tenant.lower()
        return lowered in {self.tenant_id, "organizations", "common"} or lowered in self.domains


#: Built-in role names → template ids ("Microsoft Entra built-in roles",
#: https://learn.microsoft.com/entra/identity/role-based-access-control/permissions-reference).
ROLE_IDS = {
    "Attribute Assignment Administrator": "58a13ea3-c632-46ae-9ee0-9c0d43cd7f3d",
    "Attribute Assignment Reader": "ffd52fa5-98dc-465c-991d-fc073eb59f8f",
    "Attribute Definition Administrator": "8424c6f0-a189-499e-bbd0-26c1753c96d4",
    "Attribute Definition Reader": "1d336d2c-4ae8-42ef-9711-b3604ce3fc2c",
    "Global Administrator": "62e90394-69f5-4237-9190-012177145e10",
}


def _role_ids(roles: Iterable[str]) -> set[str]:
    return {ROLE_IDS.get(role, role) for role in roles}

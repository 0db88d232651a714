"""The queue of writes: a member whose token request is slow (a retry after a 502, a dropped connection) holds only
its own place in the window of unstored tokens, not the writes of the members minted with it. Real CLI, real
``requests`` and msgraph-sdk stacks, both emulators over HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

from defguard_entra.provisioning.journal import Journal, run_key
from defguard_entra.testing import DefguardEmulator, GraphEmulator, environment
from defguard_entra.testing._server import Handler, Request, Response
from helpers import run_cli

GROUP = "Staff"
SLOW = "user005"  # minted in the first 20 after the first member (who is minted alone, to check the URL)
DELAY = 2.0  # long enough on a busy 2-core machine for the others to be stored meanwhile


class SlowForOne(DefguardEmulator):
    """Defguard answering ``SLOW``'s token request after :data:`DELAY` seconds; when it answers, it notes which
    of the other members already hold their new token in Entra."""

    graph: GraphEmulator
    entra_ids: dict[str, str]
    stored_meanwhile: list[str] | None = None

    def resolve(self, request: Request) -> tuple[str, Handler]:
        endpoint, handler = super().resolve(request)
        if endpoint != "start_enrollment" or f"/user/{SLOW}/" not in request.raw_path:
            return endpoint, handler

        def slow(req: Request) -> Response:
            time.sleep(DELAY)
            self.stored_meanwhile = [
                name
                for name, entra_id in self.entra_ids.items()
                if name != SLOW and self.graph.attributes(entra_id).get("Defguard")
            ]
            return handler(req)

        return endpoint, slow


def test_a_slow_token_request_does_not_hold_the_writes_minted_with_it(tmp_path: Path) -> None:
    with SlowForOne("2.0", enrollment_url="https://enroll.example.com") as defguard, GraphEmulator() as graph:
        graph.define_attribute_set("Defguard")
        ids = {}
        for i in range(60):
            name = f"user{i:03}"
            ids[name] = graph.add_user(f"{name}@example.com", mail=f"{name}@example.com")
            defguard.add_user(name, email=f"{name}@example.com")
        defguard.add_group(GROUP, list(ids))
        defguard.graph, defguard.entra_ids = graph, ids
        env = {**environment(defguard, graph), "DEFGUARD_ENTRA_STATE_DIR": str(tmp_path)}
        result = run_cli(["--group-name", GROUP, "--no-progress"], env)
        assert result.code == 0, result.stdout + result.stderr
        # Before the slow member's token was minted, the members minted with it (its batch of 20 when batches were
        # formed before minting: user001..user020) were already stored, and the run went on past them.
        meanwhile = set(defguard.stored_meanwhile or [])
        assert {f"user{i:03}" for i in range(1, 21)} - {SLOW} <= meanwhile
        assert len(meanwhile) > 20
        for name, entra_id in ids.items():  # nothing lost: everyone holds the token Defguard considers valid
            stored = graph.attributes(entra_id).get("Defguard", {}).get("EnrollmentToken")
            assert stored is not None
            assert stored == defguard.current_token(name), name
        assert Journal.peek(tmp_path, run_key(defguard.url, "defguard", GROUP)) == frozenset()

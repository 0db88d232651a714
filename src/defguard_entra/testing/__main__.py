"""``python -m defguard_entra.testing serve``: both emulators with the sample organisation, until Ctrl-C."""

from __future__ import annotations

import argparse
import shlex
import sys
import threading

from ._scenarios import environment, running_emulators


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m defguard_entra.testing",
        description="Run the Defguard and Graph emulators for trying the CLI by hand.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start both emulators with a sample organisation")
    serve.add_argument("--defguard-version", choices=["1.6", "2.0"], default="2.0")
    args = parser.parse_args(argv)
    with running_emulators(args.defguard_version) as (defguard, graph, scenario):
        env = environment(defguard, graph)
        print(f"Defguard {defguard.version} emulator: {defguard.url}")
        print(f"Microsoft Graph emulator:      {graph.url}")
        print("Point the CLI at them (these are emulator credentials, not real secrets):")
        for key, value in env.items():
            print(f"  export {key}={shlex.quote(value)}")
        group = scenario.group if scenario else "VPN Users"
        print(f"Then: python -m defguard_entra provision --group-name {shlex.quote(group)}")
        if scenario is not None:
            alice = graph.add_principal(
                "alice",
                user=scenario.entra_ids["alice"],
                read_users=False,
                write_attributes=False,
                read_definitions=False,
            )
            print("The end-user side, signed in as alice (after provision):")
            print(
                f"  DEFGUARD_ENTRA_GRAPH_TOKEN={shlex.quote(alice)} python -m defguard_entra fetch-config "
                "--output ./provisioning.json"
            )
        print("Ctrl-C to stop.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`fedllm certs`: create the federation CA, issue server and client certificates, revoke.

A thin argparse shell over ``fedllm_core.certs``; every failure is a ``CertificateError`` that
the ``fedllm`` dispatcher prints and turns into exit code 77. Messages go to stdout and say what
to copy where next (the full workflow is in certs/README.md).
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from fedllm_core import certs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create the federation CA (DIR/ca.crt, DIR/ca.key)")
    _common(init, writes=True)
    server = sub.add_parser("server", help="issue DIR/server.crt and DIR/server.key")
    _common(server, writes=True)
    server.add_argument("--name", required=True, help="the host name clients connect to")
    server.add_argument(
        "--ip",
        action="append",
        default=[],
        type=ipaddress.ip_address,
        metavar="IP",
        help="also valid for this IP address (repeatable; 127.0.0.1 only if given)",
    )
    _days(server)
    client = sub.add_parser("client", help="issue DIR/ID.crt and DIR/ID.key for client ID")
    _common(client, writes=True)
    client.add_argument("--name", required=True, metavar="ID", help="the client id (the CN)")
    _days(client)
    revoke = sub.add_parser("revoke", help="add client ID's certificate to DIR/revoked.json")
    _common(revoke, writes=False)
    revoke.add_argument("--name", required=True, metavar="ID", help="the client id to revoke")


def _common(parser: argparse.ArgumentParser, *, writes: bool) -> None:
    parser.add_argument("--dir", required=True, type=Path, metavar="DIR", help="certificate dir")
    if writes:
        parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _days(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days", type=int, default=certs.LEAF_DAYS, help="validity (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    handlers = {"init": _init, "server": _server, "client": _client, "revoke": _revoke}
    handlers[args.certs_command](args)
    return 0


def _init(args: argparse.Namespace) -> None:
    cert, key = certs.init_ca(args.dir, force=args.force)
    print(f"created CA {cert} and its key {key} (0600)")
    print("keep the CA key offline; only ca.crt goes to the server and clients")


def _server(args: argparse.Namespace) -> None:
    cert, key = certs.issue_server(args.dir, args.name, args.ip, force=args.force, days=args.days)
    names = ", ".join([args.name, *map(str, args.ip)])
    print(f"issued server certificate {cert} for {names}, key {key} (0600)")


def _client(args: argparse.Namespace) -> None:
    paths = certs.issue_client(args.dir, args.name, force=args.force, days=args.days)
    print(f"issued client certificate {paths.cert} (client id {args.name!r}), key {paths.key}")


def _revoke(args: argparse.Namespace) -> None:
    entry, added = certs.revoke(args.dir, args.name)
    if not added:
        print(f"{args.name!r} (serial {entry.serial:x}) was already revoked on {entry.revoked_at}")
        return
    print(f"revoked {args.name!r} (serial {entry.serial:x}) in {certs.revocation_path(args.dir)}")
    print("copy it to the server; it is re-read on the next connection (or send SIGHUP)")

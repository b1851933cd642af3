"""The flags every operator command that talks to a cloud over gRPC shares (read by cloud_client).

Kept apart from cloud_client, which imports grpc: `emma` builds every subcommand's parser on each start,
and its parsers import nothing heavier than argparse (launcher/cli.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_tls_flags(p: argparse.ArgumentParser) -> None:
    """--tls/--no-tls and --ca-file, read by `tls_for` and `cloud_channel`."""
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS to the cloud (default: off for 127.0.0.1/localhost, on otherwise)",
    )
    p.add_argument("--ca-file", type=Path, help="CA certificate to trust for TLS (default: the system's)")


def add_cloud_flags(p: argparse.ArgumentParser, email_help: str) -> None:
    """--cloud, --email (who logs in; the password comes from `operator_password`) and the TLS flags."""
    p.add_argument("--cloud", default="127.0.0.1:50051", help="the cloud's gRPC address (default 127.0.0.1:50051)")
    p.add_argument("--email", required=True, help=email_help)
    add_tls_flags(p)

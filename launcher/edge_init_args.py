"""The arguments of `emma edge init` (the command itself: edge_init.py, which imports grpc)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from launcher.cloud_args import add_cloud_flags


def add_init_parser(sub: Any) -> argparse.ArgumentParser:
    """`emma edge init` on the `emma edge` subparsers (the argparse type of `sub` is private)."""
    init: argparse.ArgumentParser = sub.add_parser(
        "init",
        help="create a site, its edge and key in the cloud and write the edge's folder",
        description="Create the site and edge (unless they exist) and an API key through the running cloud, "
        "and write FOLDER/site.toml and FOLDER/edge.key (0600) for `emma edge --config FOLDER/site.toml`. "
        "Logs in as --email; the password comes from EMMA_PASSWORD, else a prompt on a terminal.",
    )
    add_cloud_flags(init, "an admin of the organization, e.g. admin@emma.local")
    init.add_argument("--organization", required=True, help="organization id, e.g. demo")
    init.add_argument("--site", required=True, help="site id to create or reuse, e.g. home")
    init.add_argument("--edge", required=True, help="edge id to create or reuse, e.g. gw-1")
    init.add_argument(
        "--dir", type=Path, help="the edge's folder (default: .emma/sites/<site>, beside `emma up`'s state)"
    )
    init.add_argument("--site-name", default="", help="the site's display name (default: the site id)")
    init.add_argument("--time-zone", default="", help="IANA time zone of a new site, e.g. Europe/Berlin")
    init.add_argument("--latitude", type=float, help="latitude of a new site in degrees")
    init.add_argument("--longitude", type=float, help="longitude of a new site in degrees")
    init.add_argument("--country", default="", help="ISO 3166-1 alpha-2 country code of a new site, e.g. DE")
    return init

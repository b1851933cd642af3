"""Secrets of local runs, generated once into a 0600 file under the state folder, never in the repo."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

SECRETS_FILE = "secrets.json"


def local_secret(state_dir: Path, name: str, nbytes: int = 32) -> str:
    """The named secret from <state_dir>/secrets.json, created with mode 0600 on first use."""
    path = state_dir / SECRETS_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if name not in data:
        data[name] = secrets.token_urlsafe(nbytes)
        # Write to a new 0600 file then rename, so the secret never sits in a world-readable file.
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return data[name]

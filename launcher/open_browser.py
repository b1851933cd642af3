"""`emma up` opens the dashboard: in the user's browser when this machine can show one, else it prints
the address with the demo login.

Opening a browser is a convenience and must never stop `emma up`: every failure (no browser, a bad
EMMA_UP_OPEN_BROWSER, a browser command that fails) ends in the printed address and a line saying
why. It never starts a console browser (lynx, w3m, ...): Python's webbrowser picks one when TERM is set
and no display is, and it would take over the terminal `emma up` prints its log to.
"""

from __future__ import annotations

import os
import sys
import threading
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from core.env import env_flag
from core.errors import ConfigError

# webbrowser's controllers that run inside the terminal (register_standard_browsers, TERM set).
CONSOLE_BROWSERS = frozenset({"www-browser", "links", "elinks", "lynx", "w3m"})


@dataclass(frozen=True)
class OpenBrowserConfig:
    """EMMA_UP_OPEN_BROWSER: whether `emma up` opens the dashboard in a browser (default on)."""

    enabled: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> OpenBrowserConfig:
        return cls(enabled=env_flag(env, "EMMA_UP_OPEN_BROWSER", cls.enabled))


def browsable(url: str) -> str:
    """The address a browser on this machine can open: a wildcard bind address (0.0.0.0, ::) is not
    one, so it becomes the loopback address; a trailing slash for the dashboard's root."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme or "http", netloc, parts.path or "/", parts.query, ""))


def has_display(env: Mapping[str, str], platform: str = sys.platform) -> bool:
    """macOS and Windows always have a desktop; elsewhere a graphical browser needs X11 or Wayland."""
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _graphical_browser() -> webbrowser.BaseBrowser | None:
    try:
        controller = webbrowser.get()
    except webbrowser.Error:
        return None
    name = os.path.basename(getattr(controller, "name", "") or "")
    return None if name in CONSOLE_BROWSERS else controller


def open_dashboard(
    url: str,
    login: str,
    state_dir: Path,
    env: Mapping[str, str] | None = None,
    say: Callable[[str], None] = print,
) -> bool:
    """Print the dashboard's address with the demo login and, when a graphical browser is there and
    EMMA_UP_OPEN_BROWSER is not off, open it (in a background thread: a browser command that waits
    for its window never holds up `emma up`). True when a browser was asked to open it."""
    env = os.environ if env is None else env
    try:
        address = browsable(url)
        where = "EMMA_ADMIN_PASSWORD" if env.get("EMMA_ADMIN_PASSWORD") else str(state_dir / "secrets.json")
        say(f"emma up: dashboard at {address} (log in as {login}, password in {where})")
        try:
            enabled = OpenBrowserConfig.from_env(env).enabled
        except ConfigError as exc:
            say(f"emma up: not opening a browser: {exc}")
            return False
        if not enabled:
            return False
        if not has_display(env):
            say("emma up: no display here (DISPLAY, WAYLAND_DISPLAY): open the address above in a browser")
            return False
        controller = _graphical_browser()
        if controller is None:
            say("emma up: no graphical web browser found: open the address above in a browser")
            return False

        def run() -> None:
            try:
                if not controller.open(address, new=2):
                    say(f"emma up: the browser did not open {address}; open it by hand")
            except Exception as exc:  # a browser's failure never reaches emma up
                say(f"emma up: could not start a browser ({type(exc).__name__}: {exc}); open {address} by hand")

        threading.Thread(target=run, name="open-browser", daemon=True).start()
        say("emma up: opening the dashboard in your browser (EMMA_UP_OPEN_BROWSER=0 turns this off)")
        return True
    except Exception as exc:  # a convenience: never fail emma up
        say(f"emma up: not opening a browser ({type(exc).__name__}: {exc}); the dashboard is at {url}")
        return False

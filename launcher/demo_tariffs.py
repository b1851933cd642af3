"""The optimizer's price parts for `emma up`'s demo sites (Germany and Spain) when none are set.

The market publishes only the day-ahead price; what a site pays on top (network tariff, taxes and
levies) and what its exports earn come from EMMA_OPTIMIZER_NETWORK_TARIFFS, _TAXES and _FEED_IN
(docs/configuration.md). Without them every run the platform assembles is refused, naming them, so the
demo's "Re-plan now" and its receding horizon would plan nothing. These are round figures of the
right size, for the demo only (2024 averages: German network charges about 95 EUR/MWh and taxes and
levies about 54; Spanish network charges about 40 and its electricity tax about 6; feed-in at the
day-ahead price, as dynamic contracts pay), never used where the variable is set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

DEMO_TARIFFS = {
    "EMMA_OPTIMIZER_NETWORK_TARIFFS": "DE=95.5,ES=40",
    "EMMA_OPTIMIZER_TAXES": "DE=54,ES=6",
    "EMMA_OPTIMIZER_FEED_IN": "DE=market,ES=market",
}


def demo_tariffs(env: Mapping[str, str], say: Callable[[str], None]) -> dict[str, str]:
    """The demo's values of the variables `env` leaves unset, and one line saying which were used."""
    chosen = {name: value for name, value in DEMO_TARIFFS.items() if not env.get(name, "").strip()}
    if chosen:
        names = ", ".join(chosen)
        say(f"emma up: demo tariffs for the optimizer ({names}: {'; '.join(chosen.values())}); set them for your own")
    return chosen

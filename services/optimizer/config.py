"""The optimizer's settings from EMMA_OPTIMIZER_* variables: the price parts the market does not publish
(network tariff, taxes, VAT, feed-in, per country), the carbon intensity and price where no run gives
one, what an assembled run assumes where the platform says nothing (an EV's departure), and the
receding-horizon worker's cadence and thresholds."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time

from core.env import env_flag, env_float
from core.errors import ConfigError
from services.optimizer.errors import OptimizerError


class OptimizerConfigError(OptimizerError, ConfigError):
    """An EMMA_OPTIMIZER_* variable is malformed."""


# Standard VAT rates (fraction) of the countries whose bidding zones EMMA reads, as published by the
# European Commission's "VAT rates applied in the Member States" (2025) and the national authorities
# for CH, NO and GB. A country's reduced rate on electricity, where it has one, is set through
# EMMA_OPTIMIZER_VAT.
STANDARD_VAT: dict[str, float] = {
    "AT": 0.20, "BE": 0.21, "BG": 0.20, "CH": 0.081, "CZ": 0.21, "DE": 0.19, "DK": 0.25, "EE": 0.22,
    "ES": 0.21, "FI": 0.255, "FR": 0.20, "GB": 0.20, "GR": 0.24, "HR": 0.25, "HU": 0.27, "IE": 0.23,
    "IT": 0.22, "LT": 0.21, "LU": 0.17, "LV": 0.21, "NL": 0.21, "NO": 0.25, "PL": 0.23, "PT": 0.23,
    "RO": 0.19, "SE": 0.25, "SI": 0.22, "SK": 0.23,
}  # fmt: skip

# The bidding zone of each country that has exactly one, for a site whose registry entry states no
# bidding_zone of its own. Countries split into several zones (IT, NO, SE, DK) are
# named in EMMA_OPTIMIZER_ZONES or the run names them as missing.
SINGLE_ZONE: dict[str, str] = {
    "AT": "AT", "BE": "BE", "BG": "BG", "CH": "CH", "CZ": "CZ", "DE": "DE-LU", "LU": "DE-LU", "EE": "EE",
    "ES": "ES", "FI": "FI", "FR": "FR", "GB": "GB", "GR": "GR", "HR": "HR", "HU": "HU", "IE": "IE-SEM",
    "LT": "LT", "LV": "LV", "NL": "NL", "PL": "PL", "PT": "PT", "RO": "RO", "SI": "SI", "SK": "SK",
}  # fmt: skip

# Yearly average carbon intensity of electricity generation, g CO2-eq/kWh (lifecycle), 2023, from Ember
# and the Energy Institute as published by Our World in Data, "Carbon intensity of electricity
# generation" (https://ourworldindata.org/grapher/carbon-intensity-electricity); PL, SE and NO from
# Ember's 2023 power-sector figures (662, 41, 30). A slot without a published intensity of its own is
# valued at its country's average: it is what the country's grid emits per kWh over a year, not at
# that quarter hour. Countries not listed (ES, IT, NL, PT, CH, GB, ...) are set through
# EMMA_OPTIMIZER_CARBON_INTENSITY; until then a cost-and-carbon run for them names the value missing.
AVERAGE_CARBON_INTENSITY: dict[str, float] = {
    "AT": 111.0, "BE": 138.0, "BG": 335.0, "CZ": 450.0, "DE": 381.0, "DK": 152.0, "EE": 417.0, "FI": 79.0,
    "FR": 56.0, "GR": 337.0, "HR": 205.0, "HU": 204.0, "IE": 291.0, "NO": 30.0, "PL": 662.0, "SE": 41.0,
}  # fmt: skip
# The average price of an EU ETS allowance in 2024, EUR per tonne CO2 (Veyt, "2024 Year in Review EU
# ETS: Flattening out": EUR 67/t): what a tonne emitted costs in a cost-and-carbon run assembled from
# the platform, unless EMMA_OPTIMIZER_CARBON_PRICE_EUR_PER_TONNE says otherwise.
CARBON_PRICE_EUR_PER_TONNE = 67.0

ANY = "*"  # the key of a per-country value that applies to every country not listed
MARKET = "market"  # a feed-in "price" that follows the market price of each slot
_ENTRY = re.compile(r"^([A-Z]{2}|\*)=(.+)$")


def _country_map(env: Mapping[str, str], name: str, *, allow_market: bool = False) -> dict[str, float | str]:
    """ "DE=95.5,ES=40,*=60" -> {"DE": 95.5, "ES": 40.0, "*": 60.0}; "market" where allowed."""
    out: dict[str, float | str] = {}
    raw = env.get(name, "").strip()
    if not raw:
        return out
    for part in raw.split(","):
        m = _ENTRY.match(part.strip())
        if m is None:
            raise OptimizerConfigError(f"{name}: {part.strip()!r} is not COUNTRY=VALUE (DE=95.5) or *=VALUE")
        country, value = m.group(1), m.group(2).strip()
        if allow_market and value == MARKET:
            out[country] = MARKET
            continue
        try:
            number = float(value)
        except ValueError:
            raise OptimizerConfigError(f"{name}: {value!r} for {country} is not a number") from None
        if not math.isfinite(number):
            raise OptimizerConfigError(f"{name}: {value!r} for {country} is not finite")
        out[country] = number
    return out


def _numbers(values: dict[str, float | str], name: str, low: float, high: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for country, value in values.items():
        assert isinstance(value, float)
        if not low <= value <= high:
            raise OptimizerConfigError(f"{name}: {value} for {country} must be between {low} and {high}")
        out[country] = value
    return out


def _zones(env: Mapping[str, str]) -> dict[str, str]:
    name = "EMMA_OPTIMIZER_ZONES"
    out = dict(SINGLE_ZONE)
    raw = env.get(name, "").strip()
    for part in raw.split(",") if raw else []:
        m = re.fullmatch(r"([A-Z]{2})=([A-Za-z0-9-]{1,16})", part.strip())
        if m is None:
            raise OptimizerConfigError(f"{name}: {part.strip()!r} is not COUNTRY=ZONE (IT=IT-North)")
        out[m.group(1)] = m.group(2)
    return out


def _departure(env: Mapping[str, str]) -> time:
    name = "EMMA_OPTIMIZER_EV_DEPARTURE"
    raw = env.get(name, "").strip() or "07:00"
    m = re.fullmatch(r"([01]\d|2[0-3]):(00|15|30|45)", raw)
    if m is None:
        raise OptimizerConfigError(f"{name}={raw!r} is not a local time on a quarter hour (HH:MM, 07:00)")
    return time(int(m.group(1)), int(m.group(2)))


def per_country(values: Mapping[str, float | str], country: str) -> float | str | None:
    """The value for `country`, else the `*` value, else None."""
    found = values.get(country)
    return found if found is not None else values.get(ANY)


@dataclass(frozen=True)
class PriceConfig:
    """What turns a market price into a site's import and export price, per country (EUR/MWh; VAT a
    fraction). No tariff, tax or feed-in is assumed: a country without one (and without a `*` value)
    is named as missing by a run that needs it."""

    network_tariff: dict[str, float] = field(default_factory=dict)  # EMMA_OPTIMIZER_NETWORK_TARIFFS
    tax: dict[str, float] = field(default_factory=dict)  # EMMA_OPTIMIZER_TAXES
    vat: dict[str, float] = field(default_factory=lambda: dict(STANDARD_VAT))  # EMMA_OPTIMIZER_VAT
    feed_in: dict[str, float | str] = field(default_factory=dict)  # EMMA_OPTIMIZER_FEED_IN
    zones: dict[str, str] = field(default_factory=lambda: dict(SINGLE_ZONE))  # EMMA_OPTIMIZER_ZONES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PriceConfig:
        feed_in = _country_map(env, "EMMA_OPTIMIZER_FEED_IN", allow_market=True)
        for country, value in feed_in.items():
            if isinstance(value, float) and abs(value) > 10_000:
                raise OptimizerConfigError(f"EMMA_OPTIMIZER_FEED_IN: {value} for {country} is beyond ±10000 EUR/MWh")
        return cls(
            network_tariff=_numbers(
                _country_map(env, "EMMA_OPTIMIZER_NETWORK_TARIFFS"), "EMMA_OPTIMIZER_NETWORK_TARIFFS", 0, 10_000
            ),
            tax=_numbers(_country_map(env, "EMMA_OPTIMIZER_TAXES"), "EMMA_OPTIMIZER_TAXES", -10_000, 10_000),
            vat={**STANDARD_VAT, **_numbers(_country_map(env, "EMMA_OPTIMIZER_VAT"), "EMMA_OPTIMIZER_VAT", 0, 1)},
            feed_in=feed_in,
            zones=_zones(env),
        )


_CARBON_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]{0,15}|\*)=(.+)$")


def _carbon_map(env: Mapping[str, str]) -> dict[str, float]:
    """ "DE=381,DE-LU=370,*=300" -> g CO2/kWh per zone or country, over the built-in averages."""
    name = "EMMA_OPTIMIZER_CARBON_INTENSITY"
    out = dict(AVERAGE_CARBON_INTENSITY)
    raw = env.get(name, "").strip()
    for part in raw.split(",") if raw else []:
        m = _CARBON_ENTRY.match(part.strip())
        if m is None:
            raise OptimizerConfigError(f"{name}: {part.strip()!r} is not ZONE=G_PER_KWH or COUNTRY=G_PER_KWH (DE=381)")
        key, value = m.group(1), m.group(2).strip()
        try:
            number = float(value)
        except ValueError:
            raise OptimizerConfigError(f"{name}: {value!r} for {key} is not a number") from None
        if not (math.isfinite(number) and 0.0 <= number <= 2_000.0):
            raise OptimizerConfigError(f"{name}: {value!r} for {key} must be 0..2000 g CO2/kWh")
        out[key] = number
    return out


@dataclass(frozen=True)
class CarbonConfig:
    """The carbon of grid energy where a run's inputs give none (the platform has no intensity source):
    intensity_g_per_kwh: EMMA_OPTIMIZER_CARBON_INTENSITY, the average per bidding zone or country (a zone
    entry wins over its country's, `*` for every other), over AVERAGE_CARBON_INTENSITY. price_eur_per_tonne:
    EMMA_OPTIMIZER_CARBON_PRICE_EUR_PER_TONNE, what a tonne costs in an assembled COST_AND_CARBON run."""

    intensity_g_per_kwh: dict[str, float] = field(default_factory=lambda: dict(AVERAGE_CARBON_INTENSITY))
    price_eur_per_tonne: float = CARBON_PRICE_EUR_PER_TONNE

    def intensity(self, zone: str | None, country: str | None) -> float | None:
        """g CO2/kWh of the zone, else of the country, else the `*` value; None when none is known."""
        for key in (zone, country, ANY):
            if key and key in self.intensity_g_per_kwh:
                return self.intensity_g_per_kwh[key]
        return None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CarbonConfig:
        price = env_float(
            env, "EMMA_OPTIMIZER_CARBON_PRICE_EUR_PER_TONNE", CARBON_PRICE_EUR_PER_TONNE, 0.0, OptimizerConfigError
        )
        return cls(intensity_g_per_kwh=_carbon_map(env), price_eur_per_tonne=price)


@dataclass(frozen=True)
class AssemblyConfig:
    """What a run assembled from the platform assumes. soc_max_age_s: EMMA_OPTIMIZER_SOC_MAX_AGE_S, how
    old a measured state of charge may be (older: missing, the battery may have moved since).
    ev_departure: EMMA_OPTIMIZER_EV_DEPARTURE, the local time a plugged-in car leaves (no device
    reports one)."""

    prices: PriceConfig = field(default_factory=PriceConfig)
    carbon: CarbonConfig = field(default_factory=CarbonConfig)
    soc_max_age_s: float = 900.0
    ev_departure: time = time(7, 0)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AssemblyConfig:
        return cls(
            prices=PriceConfig.from_env(env),
            carbon=CarbonConfig.from_env(env),
            soc_max_age_s=env_float(env, "EMMA_OPTIMIZER_SOC_MAX_AGE_S", cls.soc_max_age_s, 1.0, OptimizerConfigError),
            ev_departure=_departure(env),
        )


@dataclass(frozen=True)
class HorizonConfig:
    """The receding-horizon worker. enabled: EMMA_OPTIMIZER_SCHEDULER (on/off). interval_s:
    EMMA_OPTIMIZER_INTERVAL_S, the longest a plan goes without a re-optimisation (default and most 15
    minutes). poll_s: EMMA_OPTIMIZER_POLL_S, how often a replica compares inputs with the plan's.
    lease_s: how long a claim holds before another replica may take the plan over. The thresholds:
    a re-optimisation as soon as a slot's market price moved by EMMA_OPTIMIZER_PRICE_THRESHOLD_EUR_PER_MWH,
    a slot's load or PV forecast by EMMA_OPTIMIZER_FORECAST_THRESHOLD_W, or a battery's measured state
    of charge left the plan's by EMMA_OPTIMIZER_SOC_THRESHOLD (a fraction of its capacity).
    horizon_slots: EMMA_OPTIMIZER_HORIZON_SLOTS, how far a re-optimisation plans (fewer when the
    prices end sooner, never under min_slots)."""

    enabled: bool = True
    interval_s: float = 900.0
    poll_s: float = 60.0
    lease_s: float = 300.0
    price_threshold_eur_per_mwh: float = 5.0
    forecast_threshold_w: float = 500.0
    soc_threshold: float = 0.05
    horizon_slots: int = 96
    min_slots: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HorizonConfig:
        err = OptimizerConfigError
        interval = env_float(env, "EMMA_OPTIMIZER_INTERVAL_S", cls.interval_s, 0.01, err)
        if interval > 900.0:
            raise err(f"EMMA_OPTIMIZER_INTERVAL_S={interval} must be at most 900 (re-optimise at least every 15 min)")
        soc = env_float(env, "EMMA_OPTIMIZER_SOC_THRESHOLD", cls.soc_threshold, 0.0, err)
        if soc > 1.0:
            raise err(f"EMMA_OPTIMIZER_SOC_THRESHOLD={soc} is a fraction of the capacity, at most 1")
        slots = env_float(env, "EMMA_OPTIMIZER_HORIZON_SLOTS", cls.horizon_slots, 4.0, err)
        if slots != int(slots) or slots > 288:
            raise err(f"EMMA_OPTIMIZER_HORIZON_SLOTS={slots} must be a whole number of slots, 4..288")
        return cls(
            enabled=env_flag(env, "EMMA_OPTIMIZER_SCHEDULER", cls.enabled, err),
            interval_s=interval,
            poll_s=env_float(env, "EMMA_OPTIMIZER_POLL_S", cls.poll_s, 0.01, err),
            lease_s=env_float(env, "EMMA_OPTIMIZER_LEASE_S", cls.lease_s, 1.0, err),
            price_threshold_eur_per_mwh=env_float(
                env, "EMMA_OPTIMIZER_PRICE_THRESHOLD_EUR_PER_MWH", cls.price_threshold_eur_per_mwh, 0.0, err
            ),
            forecast_threshold_w=env_float(
                env, "EMMA_OPTIMIZER_FORECAST_THRESHOLD_W", cls.forecast_threshold_w, 0.0, err
            ),
            soc_threshold=soc,
            horizon_slots=int(slots),
        )

"""The alarm engine: a worker that judges the enabled rules on telemetry that ingest has committed.

It is a separate consumer, never part of the ingest ack path: every EMMA_ALARM_INTERVAL_S it reads,
through the telemetry face, the samples each watched channel committed after the engine's cursor (the
judgements' read positions, kept in memory between passes: see AlarmEngine), the newest sample time
of channels with a STALE_DATA rule, and when each watched edge's newest batch arrived. One evaluation
is one transaction under an advisory lock, so with several replicas one judges at a time and a crash
leaves no half-applied judgement. Samples of a channel are judged in time order; a sample committed
later with a time before the cursor is history and is not judged again (an edge sends its outbox in
order, so this is the late replay of an outage).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg
from emma.alarm.v1 import alarm_pb2 as pb
from emma.edge.v1 import edge_link_pb2

from core.metrics import record_alarm_raised
from core.tasks import stop_task
from services.alarm import alarms
from services.alarm.config import EngineConfig
from services.alarm.engine_stats import PassStats
from services.alarm.levels import CRITICAL, NORMAL, WARNING, Judgement, Levels, judge
from services.alarm.rules import StoredRule, enabled_rule_versions, rules_by_pk
from services.market import zone_eic, zone_warnings
from services.names import EdgeName, SiteName, channel_resource, parse_channel, parse_edge
from services.platform.db import log_failed_pass
from services.platform.migrations import Conn
from services.platform.runtime import Runtime
from services.registry import edge_connections, edge_inventory, edge_pk, edges_of_organization, site_profile
from services.telemetry import (
    ChannelCursor,
    CommittedSample,
    QuietCursor,
    last_batch_times,
    latest_times,
    quiet_after,
    samples_after,
)

log = logging.getLogger("emma.alarm")

Clock = Callable[[], dt.datetime]
# pg_try_advisory_xact_lock key of the engine ("alarm" in ASCII), shared by every replica.
LOCK_KEY = 0x616C61726D
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# How long the engine trusts its lookups of edges, their keys and inventories (see _Resolver).
TARGETS_TTL = dt.timedelta(seconds=30)
# How often the engine stores the read position of judgements that did not change (see AlarmEngine):
# what a replica taking over re-reads, without effect, at most.
CURSOR_FLUSH = dt.timedelta(seconds=10)
# The severity label of emma_alarms_raised_total.
_SEVERITY_NAMES: dict[int, str] = {pb.ALARM_SEVERITY_WARNING: "WARNING", pb.ALARM_SEVERITY_CRITICAL: "CRITICAL"}
# Kinds judged sample by sample on a channel's committed values.
_SAMPLE_KINDS = (pb.ALARM_RULE_KIND_THRESHOLD, pb.ALARM_RULE_KIND_RATE_OF_CHANGE, pb.ALARM_RULE_KIND_DEVICE_FAULT)
_KINDS = (
    *_SAMPLE_KINDS,
    pb.ALARM_RULE_KIND_STALE_DATA,
    pb.ALARM_RULE_KIND_EDGE_OFFLINE,
    pb.ALARM_RULE_KIND_MARKET_WARNING,
)
# The market's clock: border warnings are per delivery day in CET/CEST.
_CET = ZoneInfo("Europe/Brussels")


@dataclass(frozen=True)
class Source:
    """One thing a rule watches: a channel of an edge, or an edge."""

    name: str  # the channel's, the edge's or (market warnings) the site's resource name (Alarm.source)
    site: str
    edge_pk: int  # 0 for a site
    channel: str  # "device/Channel"; "" for an edge; the bidding zone's EIC for a site


@dataclass(frozen=True)
class _State:
    """A rule's judgement on one source: the level and holds, the read position (the time of the last
    sample judged or passed over) and the last value (rate of change: the previous sample)."""

    judgement: Judgement
    last_time: dt.datetime | None
    last_value: float | None = None


# Normal with nothing held: the judgement a quiet band applies to.
_AT_REST = Judgement()


@dataclass(frozen=True)
class _Band:
    """A rule's levels, and the values that cannot move a judgement at rest: strictly between lo and hi.
    quiet is False for a rule that must see every sample (rate of change: every pair of samples)."""

    levels: Levels
    quiet: bool
    lo: float = -math.inf
    hi: float = math.inf


def _band_of(rule: pb.AlarmRule) -> _Band:
    levels = _levels(rule)
    if rule.kind == pb.ALARM_RULE_KIND_DEVICE_FAULT:
        return _Band(levels, True, -1.0, 1.0)  # int(value) == 0: no fault
    if rule.kind != pb.ALARM_RULE_KIND_THRESHOLD:
        return _Band(levels, False)
    highs = [x for x in (levels.warn_high, levels.critical_high) if x is not None]
    lows = [x for x in (levels.warn_low, levels.critical_low) if x is not None]
    # levels.raw_level is NORMAL exactly for values below every high level and above every low one.
    return _Band(levels, True, max(lows, default=-math.inf), min(highs, default=math.inf))


def _fault(rule: pb.AlarmRule, value: float) -> tuple[int, str]:
    """The level (NORMAL or a severity) and the words for a fault-code value."""
    code = int(value)
    if code == 0:
        return NORMAL, ""
    if not rule.fault_codes:
        return _severity(rule), f"fault code {code}"
    for fault in rule.fault_codes:
        if fault.code == code:
            severity = fault.severity if fault.severity != pb.ALARM_SEVERITY_UNSPECIFIED else _severity(rule)
            return severity, f"fault code {code}" + (f" ({fault.description})" if fault.description else "")
    return NORMAL, ""  # a code the rule does not list is not this rule's fault


def _levels(rule: pb.AlarmRule) -> Levels:
    lv = rule.levels
    return Levels(
        warn_high=lv.warn_high if lv.HasField("warn_high") else None,
        critical_high=lv.critical_high if lv.HasField("critical_high") else None,
        warn_low=lv.warn_low if lv.HasField("warn_low") else None,
        critical_low=lv.critical_low if lv.HasField("critical_low") else None,
        hysteresis=lv.hysteresis,
        hold=lv.hold_duration.ToTimedelta(),
    )


def _severity(rule: pb.AlarmRule) -> int:
    return rule.severity if rule.severity != pb.ALARM_SEVERITY_UNSPECIFIED else pb.ALARM_SEVERITY_WARNING


class _Resolver:
    """Rule targets -> sources, with the registry lookups cached for TARGETS_TTL across evaluations:
    looking up a thousand edges' keys and inventories on every pass would cost more than judging their
    samples, and an edge or device that appears is picked up within the TTL."""

    def __init__(self) -> None:
        self._conn: Conn | None = None
        self._since = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._pks: dict[EdgeName, int] = {}
        self._org_edges: dict[str, list[EdgeName]] = {}
        self._inventory: dict[int, list[edge_link_pb2.DeviceInventoryItem]] = {}
        self._sources: dict[tuple[int, int, int], list[Source]] = {}
        self._zones: dict[SiteName, str | None] = {}

    def use(self, conn: Conn, now: dt.datetime) -> _Resolver:
        self._conn = conn
        if now - self._since > TARGETS_TTL or now < self._since:
            self._since = now
            self._pks.clear()
            self._org_edges.clear()
            self._inventory.clear()
            self._sources.clear()
            self._zones.clear()
        return self

    async def pk(self, edge: EdgeName) -> int | None:
        if edge in self._pks:
            return self._pks[edge]
        assert self._conn is not None
        pk = await edge_pk(self._conn, edge)
        if pk is not None:  # an edge not provisioned yet is asked for again on the next pass
            self._pks[edge] = pk
        return pk

    async def edges(self, org: str) -> list[EdgeName]:
        if org not in self._org_edges:
            assert self._conn is not None
            self._org_edges[org] = await edges_of_organization(self._conn, org)
        return self._org_edges[org]

    async def sources(self, stored: StoredRule) -> list[Source]:
        key = (stored.pk, stored.rule.update_time.seconds, stored.rule.update_time.nanos)
        found = self._sources.get(key)
        if found is None:
            found = await self._resolve(stored)
            if found:  # nothing to watch yet (no edge, no inventory): asked again on the next pass
                self._sources[key] = found
        return found

    async def zone(self, site: SiteName) -> str | None:
        """The site's bidding zone (EIC): the one the registry states, else its country's when the
        country is one zone ("ES", "FR"); None when neither says."""
        if site not in self._zones:
            assert self._conn is not None
            profile = await site_profile(self._conn, site)
            self._zones[site] = (
                None
                if profile is None
                else zone_eic(profile.bidding_zone)
                if profile.bidding_zone
                else zone_eic(profile.country_code)
            )
        return self._zones[site]

    async def _resolve(self, stored: StoredRule) -> list[Source]:
        rule = stored.rule
        if rule.kind == pb.ALARM_RULE_KIND_MARKET_WARNING:
            # The sites of the organization (those with an edge) in the rule's zone, or in any zone.
            wanted = zone_eic(rule.bidding_zone) if rule.bidding_zone else None
            sites = sorted({e.site_name for e in await self.edges(stored.org)}, key=str)
            out = []
            for site in sites:
                zone = await self.zone(site)
                if zone is not None and (wanted is None or zone == wanted):
                    out.append(Source(str(site), str(site), 0, zone))
            return out
        if rule.kind == pb.ALARM_RULE_KIND_EDGE_OFFLINE:
            edges = [parse_edge(rule.edge)] if rule.edge else await self.edges(stored.org)
            out = []
            for e in edges:
                pk = await self.pk(e)
                if pk is not None:
                    out.append(Source(str(e), str(e.site_name), pk, ""))
            return out
        if rule.channel:
            ch = parse_channel(rule.channel)
            pk = await self.pk(ch.edge)
            return [] if pk is None else [Source(rule.channel, str(ch.edge.site_name), pk, ch.address)]
        out = []
        for e in await self.edges(stored.org):
            pk = await self.pk(e)
            if pk is None:
                continue
            inventory = self._inventory.get(pk)
            if inventory is None:
                assert self._conn is not None
                inventory = await edge_inventory(self._conn, pk)
                if inventory:  # an edge that has not said Hello yet is asked again on the next pass
                    self._inventory[pk] = inventory
            for device in inventory:
                if device.driver == rule.device_type:
                    address = f"{device.device_id}/{rule.channel_id}"
                    out.append(Source(channel_resource(e, address), str(e.site_name), pk, address))
        return out


class AlarmEngine:
    """The evaluation loop. Between passes it keeps every rule's judgement on every source (level, since
    when each level holds, the read position, the last value) in memory and stores only what changed:
    a judgement whose level or hold changed, a new one, and every CURSOR_FLUSH the read positions that
    moved. Reading and rewriting ten thousand judgements on every pass cost more than the judging, and
    the pass's length is part of every alarm's latency.

    What is stored stays consistent with what is kept: a judgement is stored whenever it changes, so the
    samples after a stored read position up to the kept one changed nothing, and a replica that takes
    over from the stored positions judges them again to the same result. alarm.engine_generation says
    whether the kept judgements are still what is stored: each pass moves it on by one, and so does
    anything else that writes alarm.rule_state (a manual clear re-arms its rule); a pass that finds it
    anywhere else (another replica judged meanwhile), or a pass that failed, reads them again."""

    def __init__(
        self, pool: asyncpg.Pool, config: EngineConfig, clock: Clock = lambda: dt.datetime.now(dt.UTC)
    ) -> None:
        self._pool = pool
        self._config = config
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._resolver = _Resolver()
        # pk -> (version, the decoded rule, its levels and quiet band), decoded once per rule version.
        self._rules: dict[int, tuple[dt.datetime, StoredRule, _Band]] = {}
        # The kept judgements, and what alarm.rule_state holds for each (to store only changes).
        self._states: dict[tuple[int, str], _State] = {}
        self._stored: dict[tuple[int, str], _State] = {}
        self._generation: int | None = None  # where this engine's last pass left the counter
        self._flushed = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.stats = PassStats()

    async def start(self) -> None:
        if self._config.enabled:
            self._task = asyncio.create_task(self._loop(), name="alarm-engine")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        logged = loop.time()
        while True:
            started = loop.time()
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database outage or a bad row must not end the engine; the next round retries.
                log_failed_pass(log, "alarm evaluation failed", logging.ERROR)
                self.stats.failed += 1
            if loop.time() - logged >= self._config.stats_interval_s:
                self.stats.log(log)
                logged = loop.time()
            # Passes start every interval (not an interval after the last one ended), so a sample waits
            # at most one interval plus one pass for its judgement.
            await asyncio.sleep(max(0.0, started + self._config.interval_s - loop.time()))

    async def evaluate(self) -> int:
        """One evaluation of every enabled rule; returns the number of transitions it stored (0 when
        another replica holds the engine's lock)."""
        started = asyncio.get_running_loop().time()
        try:
            changes = await self._evaluate()
        except BaseException:
            # What the failed pass changed in memory was rolled back in the database.
            self._forget()
            raise
        if changes is None:
            self.stats.skipped += 1
            return 0
        self.stats.durations_s.append(asyncio.get_running_loop().time() - started)
        return changes

    def _forget(self) -> None:
        self._generation = None
        self._states.clear()
        self._stored.clear()

    async def _evaluate(self) -> int | None:
        """The pass; None when another replica holds the lock."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_KEY):
                return None
            generation = await conn.fetchval("SELECT generation FROM alarm.engine_generation")
            if generation != self._generation:
                self._forget()
            now = self._clock()
            changes = await alarms.unshelve_due(conn, now)
            resolver = self._resolver.use(conn, now)
            watched: list[tuple[StoredRule, Source]] = []
            for stored in await self._enabled_rules(conn):
                watched.extend((stored, s) for s in await resolver.sources(stored))
            states = await self._load_states(conn, watched)
            changes += await self._samples(conn, [w for w in watched if w[0].rule.kind in _SAMPLE_KINDS], states)
            changes += await self._stale(
                conn, [w for w in watched if w[0].rule.kind == pb.ALARM_RULE_KIND_STALE_DATA], states, now
            )
            changes += await self._offline(
                conn, [w for w in watched if w[0].rule.kind == pb.ALARM_RULE_KIND_EDGE_OFFLINE], states, now
            )
            changes += await self._market(
                conn, [w for w in watched if w[0].rule.kind == pb.ALARM_RULE_KIND_MARKET_WARNING], states, now
            )
            changes += await alarms.escalate_due(conn, now)
            # Alarm rows, then judgements, then the counter: the order a manual clear takes its locks in,
            # so the two never deadlock (escalations lock alarm rows too, so they come first).
            await self._store_states(conn, now)
            # Moved on by one from where this pass found it, unless something else moved it meanwhile
            # (a manual clear committed during the pass): then the next pass reads the judgements again.
            after = await conn.fetchval(
                "UPDATE alarm.engine_generation SET generation = generation + 1 RETURNING generation"
            )
            self._generation = after if after == generation + 1 else None
            return changes

    async def _load_states(self, conn: Conn, watched: list[tuple[StoredRule, Source]]) -> dict[tuple[int, str], _State]:
        """The kept judgements of the watched sources, reading only those not kept yet; the ones of rules
        no longer watched are dropped."""
        keys = {(stored.pk, s.name) for stored, s in watched}
        missing = [key for key in keys if key not in self._states]
        if missing:
            found = await _load_states(conn, missing)
            self.stats.judgements_read += len(found)
            for key in missing:
                if key in found:
                    self._states[key] = self._stored[key] = found[key]
                else:  # new: stored at the end of this pass, so it is not asked for again
                    self._states[key] = _State(Judgement(), None)
        if len(self._states) > len(keys):
            for key in [key for key in self._states if key not in keys]:
                del self._states[key]
                self._stored.pop(key, None)
        return self._states

    async def _store_states(self, conn: Conn, now: dt.datetime) -> None:
        """Stores the judgements that changed (level, holds) or are new; every CURSOR_FLUSH also those
        whose read position or last value moved."""
        flush = now - self._flushed >= CURSOR_FLUSH or now < self._flushed
        saves = []
        for key, state in self._states.items():
            old = self._stored.get(key)
            if (
                old is None
                or old.judgement != state.judgement
                or (flush and (old.last_time != state.last_time or old.last_value != state.last_value))
            ):
                saves.append((key[0], key[1], state.judgement, state.last_time, state.last_value))
                self._stored[key] = state
        if flush:
            self._flushed = now
        await _save_states(conn, saves)
        self.stats.judgements_stored += len(saves)

    async def _enabled_rules(self, conn: Conn) -> list[StoredRule]:
        """The enabled rules, decoded only when new or changed since the last pass: decoding ten
        thousand rules every second would be most of an idle pass."""
        versions = await enabled_rule_versions(conn, _KINDS)
        changed = [pk for pk, time in versions.items() if pk not in self._rules or self._rules[pk][0] != time]
        if changed:
            for stored in await rules_by_pk(conn, changed):
                self._rules[stored.pk] = (stored.rule.update_time.ToDatetime(dt.UTC), stored, _band_of(stored.rule))
        for pk in [pk for pk in self._rules if pk not in versions]:
            del self._rules[pk]
        # A rule changed between the two reads is taken as read; the next pass sees its new version.
        return [self._rules[pk][1] for pk in sorted(versions) if pk in self._rules]

    def _band(self, stored: StoredRule) -> _Band:
        """The levels and quiet band of a rule this pass's `_enabled_rules` returned, decoded with it."""
        return self._rules[stored.pk][2]

    async def _quiet(
        self, conn: Conn, watched: list[tuple[StoredRule, Source]], states: dict[tuple[int, str], _State]
    ) -> list[tuple[StoredRule, Source]]:
        """Moves the read positions over what channels at rest committed inside their quiet bands, asked of
        the database in short (one row per channel instead of every sample); returns the watched sources
        whose samples are to be read and judged one by one. A channel is asked in short when every rule on
        it rests (normal, nothing held, a quiet band, a read position): the band it is asked with is the
        narrowest of theirs, from the earliest of their read positions."""
        by_channel: dict[tuple[int, str], list[tuple[StoredRule, Source]]] = defaultdict(list)
        for w in watched:
            by_channel[(w[1].edge_pk, w[1].channel)].append(w)
        asked: dict[tuple[int, str], QuietCursor] = {}
        for key, on_channel in by_channel.items():
            lo, hi, after = -math.inf, math.inf, None
            for stored, s in on_channel:
                state = states.get((stored.pk, s.name))
                band = self._band(stored)
                if state is None or state.last_time is None or not band.quiet or state.judgement != _AT_REST:
                    break
                lo, hi = max(lo, band.lo), min(hi, band.hi)
                after = state.last_time if after is None else min(after, state.last_time)
            else:
                if after is not None:
                    asked[key] = QuietCursor(key[0], key[1], after, lo, hi)
        reads = await quiet_after(conn, list(asked.values()))
        rest: list[tuple[StoredRule, Source]] = []
        for key, on_channel in by_channel.items():
            if key not in asked:
                rest.extend(on_channel)
                continue
            read = reads.get(key)
            if read is None:
                continue  # nothing new
            if read.loud:
                rest.extend(on_channel)
                continue
            self.stats.channels_quiet += 1
            for stored, s in on_channel:
                state = states[(stored.pk, s.name)]
                if state.last_time is not None and read.newest > state.last_time:
                    states[(stored.pk, s.name)] = _State(state.judgement, read.newest, state.last_value)
        return rest

    async def _samples(
        self, conn: Conn, watched: list[tuple[StoredRule, Source]], states: dict[tuple[int, str], _State]
    ) -> int:
        watched = await self._quiet(conn, watched, states)
        cursors: dict[tuple[int, str], dt.datetime | None] = {}
        for stored, s in watched:
            state = states.get((stored.pk, s.name))
            after = state.last_time if state else None
            key = (s.edge_pk, s.channel)
            # Several rules on one channel read it once, from the earliest of their cursors. A rule
            # without one (new: it judges the newest sample) does not pull the others' cursors up to
            # the newest sample, which would skip what they have not judged yet.
            if key not in cursors:
                cursors[key] = after
            else:
                current = cursors[key]
                if current is None or (after is not None and after < current):
                    cursors[key] = after
        samples = await samples_after(
            conn,
            [ChannelCursor(pk, ch, after) for (pk, ch), after in cursors.items()],
            self._config.samples_per_channel,
        )
        self.stats.samples_read += len(samples)
        by_channel: dict[tuple[int, str], list[CommittedSample]] = defaultdict(list)
        for x in samples:
            by_channel[(x.edge_pk, x.channel)].append(x)
        changes = 0
        values: list[tuple[int, str, float]] = []
        for stored, s in watched:
            key = (stored.pk, s.name)
            state = states.get(key) or _State(Judgement(), None)
            found = by_channel.get((s.edge_pk, s.channel))
            if not found:
                if state.last_time is None:
                    # Nothing after where the channel was read from: the read position starts there. With
                    # no other rule's cursor that is a channel without a sample yet: everything it sends
                    # from now on is new, so the cursor starts at the beginning, not at its newest sample.
                    state = _State(state.judgement, cursors[(s.edge_pk, s.channel)] or _EPOCH, state.last_value)
                states[key] = state
                continue
            kind = stored.rule.kind
            band = self._band(stored)
            judgement, last_time, last_value = state.judgement, state.last_time, state.last_value
            judged_value: float | None = None
            first = 0
            if last_time is not None:
                while first < len(found) and found[first].time <= last_time:
                    first += 1  # judged already (another rule on the channel read from further back)
            if band.quiet and judgement == _AT_REST:
                # Normal, nothing held: a sample inside the quiet band cannot change that, so only the
                # read position moves over them (most samples of most channels, most of the time).
                rest = first
                while rest < len(found) and band.lo < found[rest].value < band.hi:
                    rest += 1
                if rest > first:
                    last_time, last_value = found[rest - 1].time, found[rest - 1].value
                    first = rest
            for x in found[first:]:
                time, value, unit = x.time, x.value, x.unit
                shown, shown_unit, words = value, unit, ""
                if kind == pb.ALARM_RULE_KIND_DEVICE_FAULT:
                    level, words = _fault(stored.rule, value)
                    judged = Judgement(level=level)
                elif kind == pb.ALARM_RULE_KIND_RATE_OF_CHANGE:
                    if last_value is None or last_time is None or last_time == _EPOCH:
                        last_time, last_value = time, value  # the first sample has no rate yet
                        continue
                    rate = (value - last_value) / ((time - last_time).total_seconds() / 60)
                    shown, shown_unit = rate, f"{unit}/min" if unit else "/min"
                    judged = judge(band.levels, judgement, time, rate)
                else:
                    judged = judge(band.levels, judgement, time, value)
                if judged.level != judgement.level:
                    # The words are only needed for a change: formatting them for every sample was a
                    # good part of a pass over ten thousand quiet rules.
                    if kind == pb.ALARM_RULE_KIND_DEVICE_FAULT:
                        note = words
                        message = f"{s.channel}: {words}" if words else f"{s.channel} reports no fault"
                    elif kind == pb.ALARM_RULE_KIND_RATE_OF_CHANGE:
                        note = _threshold_note(band.levels, judged.level, shown, shown_unit)
                        message = f"{s.channel} changes {shown:+g} {shown_unit}" + (
                            f": {note}" if note else ", back to normal"
                        )
                    else:
                        note = _threshold_note(band.levels, judged.level, value, unit)
                        message = f"{s.channel} {value:g} {unit}".rstrip() + (
                            f": {note}" if note else " is back to normal"
                        )
                    changes += await _apply(conn, stored, s, judged.level, shown, shown_unit, time, message, note)
                judgement, last_time, last_value, judged_value = judged, time, value, shown
            if judged_value is not None and judgement.level != NORMAL:
                values.append((stored.pk, s.name, judged_value))
            if last_time != state.last_time or judgement != state.judgement or last_value != state.last_value:
                state = _State(judgement, last_time, last_value)
            states[key] = state
        # One statement for every open alarm's newest value: with thousands of rules, a statement per
        # rule would cost more than the judging. The judgements are stored at the end of the pass.
        await alarms.update_open_values(conn, values)
        return changes

    async def _stale(
        self,
        conn: Conn,
        watched: list[tuple[StoredRule, Source]],
        states: dict[tuple[int, str], _State],
        now: dt.datetime,
    ) -> int:
        latest = await latest_times(conn, list({(s.edge_pk, s.channel) for _, s in watched}))
        changes = 0
        for stored, s in watched:
            window = stored.rule.stale_after.ToTimedelta()
            newest = latest.get((s.edge_pk, s.channel))
            # A channel that never reported is stale once the rule has waited a whole window for it.
            since = newest if newest is not None else stored.rule.update_time.ToDatetime(dt.UTC)
            stale = now - since > window
            seconds = int((now - since).total_seconds())
            message = (
                f"{s.channel} sent no value for {seconds} s (allowed {int(window.total_seconds())} s)"
                if stale
                else f"{s.channel} reports again"
            )
            changes += await self._on_off(conn, stored, s, states, stale, now, message)
        return changes

    async def _offline(
        self,
        conn: Conn,
        watched: list[tuple[StoredRule, Source]],
        states: dict[tuple[int, str], _State],
        now: dt.datetime,
    ) -> int:
        pks = list({s.edge_pk for _, s in watched})
        last = await last_batch_times(conn, pks)
        # The edges' sessions (EdgeLink's, read through the registry's face): whether the stream is open
        # and when the edge was last heard of (Hello, heartbeats). A batch also counts as a sign of life.
        sessions = await edge_connections(conn, pks)
        changes = 0
        for stored, s in watched:
            window = stored.rule.offline_after.ToTimedelta()
            name = parse_edge(s.name).edge
            newest = last.get(s.edge_pk)
            session = sessions.get(s.edge_pk)
            if session is None:
                # Never connected through a session: the telemetry alone; an edge that never sent any
                # has not gone offline, it was never online.
                offline = newest is not None and now - newest > window
                silent = int((now - newest).total_seconds()) if newest is not None else 0
                message = f"{name} sent no telemetry for {silent} s" if offline else f"{name} sends telemetry again"
            else:
                seen = max(session.last_seen_time, newest) if newest is not None else session.last_seen_time
                silent = int((now - seen).total_seconds())
                offline = now - seen > window
                if not session.online:
                    # The stream ended (a killed edge's connection is reset at once): offline unless it
                    # comes back within the rule's timeout.
                    message = f"{name}'s stream closed; not back for {silent} s" if offline else ""
                else:
                    # Open but silent (a half-open connection, a hung daemon): no heartbeat, no batch.
                    message = f"{name}'s stream is open but silent for {silent} s" if offline else ""
                message = message or f"{name} is connected again"
            changes += await self._on_off(conn, stored, s, states, offline, now, message)
        return changes

    async def _market(
        self,
        conn: Conn,
        watched: list[tuple[StoredRule, Source]],
        states: dict[tuple[int, str], _State],
        now: dt.datetime,
    ) -> int:
        """A site's alarm holds while the market domain stores a border warning of its zone for today's
        or tomorrow's delivery day (day-ahead results are published the day before); it clears when a
        later publication clears the warning or its day is over."""
        if not watched:
            return 0
        today = now.astimezone(_CET).date()
        days = [today, today + dt.timedelta(days=1)]
        warnings = await zone_warnings(conn, sorted({s.channel for _, s in watched}), days)
        changes = 0
        for stored, s in watched:
            found = [w for w in warnings if s.channel in (w.out_zone, w.in_zone)]
            message = (
                "; ".join(f"{w.delivery_day.isoformat()}: {w.message}" for w in found)
                if found
                else "no market warning for the site's bidding zone any more"
            )
            changes += await self._on_off(conn, stored, s, states, bool(found), now, message)
        return changes

    @staticmethod
    async def _on_off(
        conn: Conn,
        stored: StoredRule,
        s: Source,
        states: dict[tuple[int, str], _State],
        condition: bool,
        now: dt.datetime,
        message: str,
    ) -> int:
        state = states.get((stored.pk, s.name)) or _State(Judgement(), None)
        level = _severity(stored.rule) if condition else NORMAL
        if level == state.judgement.level:
            return 0
        changes = await _apply(conn, stored, s, level, None, "", now, message, message)
        states[(stored.pk, s.name)] = _State(Judgement(level=level), state.last_time, state.last_value)
        return changes


def _threshold_note(levels: Levels, level: int, value: float, unit: str) -> str:
    if level == NORMAL:
        return ""
    name = "critical" if level == CRITICAL else "warning"
    high = levels.critical_high if level == CRITICAL else levels.warn_high
    low = levels.critical_low if level == CRITICAL else levels.warn_low
    if high is not None and value >= high - levels.hysteresis:
        return f"{name} (>= {high:g} {unit})".replace(" )", ")")
    if low is not None:
        return f"{name} (<= {low:g} {unit})".replace(" )", ")")
    return name


async def _apply(
    conn: Conn,
    stored: StoredRule,
    s: Source,
    new: int,
    value: float | None,
    unit: str,
    time: dt.datetime,
    message: str,
    note: str,
) -> int:
    """Stores what a change of the judged level (NORMAL or a severity) means for the source's alarm;
    returns the number of transitions."""
    severity = new
    row = await alarms.open_alarm(conn, stored.pk, s.name)
    if new == NORMAL:
        if row is None:
            return 0  # cleared by hand meanwhile
        await alarms.close(conn, row, alarms.ENGINE_ACTOR, time, value, message)
        return 1
    if row is not None:
        if row["severity"] == severity:
            return 0
        await alarms.change_severity(conn, row, severity, value, message, time, note)
        return 1
    rule = stored.rule
    new_alarm = alarms.NewAlarm(
        org=stored.org,
        rule_pk=stored.pk,
        rule=rule.name,
        rule_display_name=rule.display_name,
        kind=rule.kind,
        source=s.name,
        site=s.site,
        severity=severity if severity in (WARNING, CRITICAL) else pb.ALARM_SEVERITY_WARNING,
        value=value,
        unit=unit,
        message=message,
        remediation_steps=list(rule.remediation_steps),
        allow_manual_clear=rule.allow_manual_clear,
        escalate_after=rule.escalate_after.ToTimedelta() if rule.HasField("escalate_after") else None,
        proposed_commands=list(rule.proposed_commands),
        notification_channels=[n.rsplit("/", 1)[-1] for n in rule.notification_channels],
    )
    if await alarms.raise_alarm(conn, new_alarm, time, note) is None:
        return 0
    record_alarm_raised(_SEVERITY_NAMES.get(new_alarm.severity, "WARNING"))
    return 1


async def _load_states(conn: Conn, keys: list[tuple[int, str]]) -> dict[tuple[int, str], _State]:
    if not keys:
        return {}
    rows = await conn.fetch(
        """SELECT r.rule_pk, r.source, r.level, r.warn_since, r.critical_since, r.last_time, r.last_value
           FROM alarm.rule_state r JOIN unnest($1::bigint[], $2::text[]) AS w(rule_pk, source)
             ON r.rule_pk = w.rule_pk AND r.source = w.source""",
        [pk for pk, _ in keys],
        [source for _, source in keys],
    )
    return {
        (int(r["rule_pk"]), r["source"]): _State(
            Judgement(r["level"], r["warn_since"], r["critical_since"]), r["last_time"], r["last_value"]
        )
        for r in rows
    }


async def _save_states(conn: Conn, saves: list[tuple[int, str, Judgement, dt.datetime | None, float | None]]) -> None:
    if not saves:
        return
    await conn.execute(
        """INSERT INTO alarm.rule_state (rule_pk, source, level, warn_since, critical_since, last_time, last_value)
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::smallint[], $4::timestamptz[], $5::timestamptz[],
                                $6::timestamptz[], $7::float8[])
           ON CONFLICT (rule_pk, source) DO UPDATE SET level = EXCLUDED.level, warn_since = EXCLUDED.warn_since,
               critical_since = EXCLUDED.critical_since, last_time = EXCLUDED.last_time,
               last_value = EXCLUDED.last_value""",
        [x[0] for x in saves],
        [x[1] for x in saves],
        [x[2].level for x in saves],
        [x[2].warn_since for x in saves],
        [x[2].critical_since for x in saves],
        [x[3] for x in saves],
        [x[4] for x in saves],
    )


def engine_of(runtime: Runtime) -> AlarmEngine:
    """The worker factory ServiceSpec names: settings from the process's environment."""
    return AlarmEngine(runtime.pool, EngineConfig.from_env(runtime.config.env or os.environ))

"""The dashboard in a real Chromium: first render of a site page with 20 devices, bundle size, live
value latency, a 30-day chart.

    python -m bench.dashboard [--quick] [--runs 3] [--days 30] [--samples 20] [--output FILE]

The stack is the one `emma up` runs, as separate processes: `emma serve all` (every service) and `emma
gateway` (which serves web/dist as committed) on a fresh database (DATABASE_URL's server, else an
embedded PostgreSQL). Site bench/dash has one edge with 20 devices (grid meter, 5 PV inverters, 5
batteries with their state of charge, 4 EV chargers, 5 loads: 25 channels) that holds a real EdgeLink
stream open from this process and sends heartbeats; its history (`--days` of samples every minute on
every channel) is loaded by binary COPY and rolled up by the worker's own code before the services
start. Chromium (the system's, else Playwright's own) is driven by Playwright.

Each run opens a new browser context (empty cache, the session already in localStorage as after a
login) and measures, in the browser's own clock:
- first render: navigation start to the frame where all 20 devices' rows and the energy flow's PV
  value are on screen (HTML, JS, CSS, every API read and the render);
- live latency: a new PV value sent through the edge's stream; from the moment ingest acknowledged the
  batch (committed) to the frame that shows it (and from the send), `--samples` values per run at
  random moments (the telemetry service reads a site's live values every EMMA_LIVE_POLL_INTERVAL_S,
  1 s by default, so a value waits up to that long for its poll);
- 30-day chart: the "30 days" period chosen, to the history chart drawn with the 30-day buckets
  (including the query over all power channels), and the draw alone (data handed to uPlot to drawn).
The JS and CSS size is the committed build gzipped (-9), and what the gateway actually sent.
Goals (issue 19): first render < 1 s, JS+CSS < 300 KB gzipped, live < 1 s, 30-day chart < 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gzip
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import numpy as np
from emma.edge.v1 import edge_link_pb2, edge_link_pb2_grpc
from google.protobuf import timestamp_pb2
from playwright.async_api import Browser, Page, async_playwright

from bench.harness import BENCH_ENV, EMMA, ROOT, cloud_process, copy_samples, database, migrate, percentile, summary
from bench.machine import describe
from services.identity import accounts, issue_edge_key
from services.identity.passwords import Passwords
from services.names import EdgeName
from services.platform.config import IngestConfig
from services.registry import ensure_edge
from services.telemetry import roll_up_closed_buckets, samples_copy_payload

EDGE = EdgeName("bench", "dash", "dash")
DEVICES = (
    ["grid"]
    + [f"pv_{i}" for i in range(1, 6)]
    + [f"battery_{i}" for i in range(1, 6)]
    + [f"ev_{i}" for i in range(1, 5)]
    + [f"load_{i}" for i in range(1, 6)]
)
CHANNELS = [(f"{d}/ActivePower", "W") for d in DEVICES] + [(f"battery_{i}/Soc", "%") for i in range(1, 6)]
PV = [i for i, (c, _) in enumerate(CHANNELS) if c.startswith("pv_")]
STEP_S = 60
GOALS = {"first_render_ms": 1000.0, "bundle_gzip_kb": 300.0, "live_ms": 1000.0, "chart_30d_ms": 200.0}
DIST = ROOT / "web" / "dist"

# True (as performance.now(), ms since navigation start) once every device row and the PV flow value
# are on screen; polled on every animation frame.
RENDERED = """() => {
  const rows = document.querySelectorAll('tr[data-device]').length;
  const pv = document.querySelector('[data-flow-value=pv] dd');
  return rows >= %d && pv && !pv.textContent.includes('no value') ? performance.now() : false;
}"""
# Installs an observer resolving (epoch ms) at the first frame after the PV value reads `expected`.
WATCH = """(expected) => {
  window.__benchSeen = new Promise((resolve) => {
    const check = () => {
      const el = document.querySelector('[data-flow-value=pv] dd');
      if (!el || !el.textContent.trim().startsWith(expected)) return;
      observer.disconnect();
      requestAnimationFrame(() => resolve(performance.timeOrigin + performance.now()));
    };
    const observer = new MutationObserver(check);
    observer.observe(document.body, { subtree: true, childList: true, characterData: true });
  });
}"""
CLICK_30_DAYS = """() => {
  performance.clearMarks('chart:history:drawn');
  performance.clearMarks('chart:history:data');
  const buttons = [...document.querySelectorAll('[aria-label=Period] button')];
  const button = buttons.find((b) => b.textContent.trim() === '30 days');
  const t = performance.now();
  button.click();
  return t;
}"""
# The 30-day buckets (108 minutes) drawn: {drawn, data} mark times (ms since navigation start).
DRAWN_30_DAYS = """() => {
  const drawn = performance.getEntriesByName('chart:history:drawn').pop();
  const data = performance.getEntriesByName('chart:history:data').pop();
  if (!drawn || !data || drawn.detail.interval !== 6480 || data.detail.interval !== 6480) return false;
  return { drawn: drawn.startTime, data: data.startTime, points: drawn.detail.points };
}"""


def ts(t: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(t * 1e9))
    return out


async def seed(dsn: str, days: int) -> tuple[str, str, str, int]:
    """The site, its edge key, an admin, and `days` of history on every channel, rolled up."""
    conn = await asyncpg.connect(dsn)
    try:
        pk = await ensure_edge(
            conn, EDGE, time_zone="Europe/Madrid", latitude_deg=40.42, longitude_deg=-3.70, country_code="ES"
        )
        _, key = await issue_edge_key(conn, pk)
        email, password = f"bench-{secrets.token_hex(4)}@dash.bench", secrets.token_urlsafe(18)
        await accounts.ensure_user(
            conn,
            Passwords(time_cost=1, memory_kib=8192, parallelism=1),
            email=email,
            password=password,
            org_id=EDGE.org,
            role=accounts.ROLES["admin"],
        )
        end = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=20)
        start = end - dt.timedelta(days=days)
        await conn.execute("SELECT telemetry.ensure_partitions($1, $2)", start.date(), end.date())
        times = np.arange(int(start.timestamp()), int(end.timestamp()), STEP_S, dtype=np.int64) * 1_000_000
        rows = 0
        for i, (channel, unit) in enumerate(CHANNELS):
            sid = await conn.fetchval(
                "INSERT INTO telemetry.series (edge_pk, channel, unit) VALUES ($1, $2, $3) RETURNING id",
                pk,
                channel,
                unit,
            )
            phase = np.arange(len(times)) * (2 * np.pi * STEP_S / 86400) + i
            values = 50 + 40 * np.sin(phase) if unit == "%" else 2000 * np.sin(phase) + 100 * i
            await copy_samples(conn, samples_copy_payload(np.full(len(times), sid, dtype=np.int64), times, values))
            rows += len(times)
        # Every bucket dirty, as ingest would have marked them; the rollup worker's own code rolls them up.
        await conn.execute(
            """INSERT INTO telemetry.rollup_dirty (edge_pk, bucket)
               SELECT $1, b FROM generate_series($2::timestamptz, $3::timestamptz - interval '15 minutes',
                                                 interval '15 minutes') b""",
            pk,
            start.replace(minute=start.minute - start.minute % 15),
            end,
        )
        while await roll_up_closed_buckets(conn, grace_s=0, limit=500):
            pass
        await conn.execute("ANALYZE telemetry.samples; ANALYZE telemetry.rollup_15m; ANALYZE telemetry.rollup_1h")
        return key, email, password, rows
    finally:
        await conn.close()


class Edge:
    """The site's edge: one EdgeLink stream, a batch at a time, each acknowledged once committed."""

    def __init__(self, port: int, key: str) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.out: asyncio.Queue[edge_link_pb2.ConnectRequest | None] = asyncio.Queue()
        self.call = edge_link_pb2_grpc.EdgeLinkServiceStub(self.channel).Connect(self._requests())
        self.key = key
        self.seq = 0
        self.acks: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None

    async def _requests(self) -> AsyncIterator[edge_link_pb2.ConnectRequest]:
        while (item := await self.out.get()) is not None:
            yield item

    async def start(self) -> None:
        table = [edge_link_pb2.ChannelDescriptor(index=i, channel=c, unit=u) for i, (c, u) in enumerate(CHANNELS)]
        hello = edge_link_pb2.Hello(
            edge=str(EDGE), api_key=self.key, agent_version="bench", protocol_version=1, channel_table=table
        )
        hello.edge_time.CopyFrom(ts(time.time()))
        await self.out.put(edge_link_pb2.ConnectRequest(hello=hello))
        first = await self.call.read()
        assert isinstance(first, edge_link_pb2.ConnectResponse) and first.WhichOneof("message") == "welcome", first
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    return
                assert isinstance(response, edge_link_pb2.ConnectResponse)
                if response.WhichOneof("message") == "telemetry_ack":
                    await self.acks.put((response.telemetry_ack.batch_seq, time.time()))

    async def send(self, points: dict[int, float]) -> tuple[float, float]:
        """Send one batch measured now; (sent, acknowledged) as epoch seconds."""
        self.seq += 1
        sent = time.time()
        batch = edge_link_pb2.TelemetryBatch(
            batch_seq=self.seq,
            base_time=ts(sent),
            channel_indexes=list(points),
            time_offsets_ms=[0] * len(points),
            values=list(points.values()),
        )
        await self.out.put(edge_link_pb2.ConnectRequest(telemetry_batch=batch))
        while True:
            async with asyncio.timeout(30):
                seq, acked = await self.acks.get()
            if seq >= self.seq:
                return sent, acked

    async def heartbeats(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(5)
                beat = edge_link_pb2.Heartbeat()
                beat.edge_time.CopyFrom(ts(time.time()))
                await self.out.put(edge_link_pb2.ConnectRequest(heartbeat=beat))

    async def close(self) -> None:
        if self.reader:
            self.reader.cancel()
        await self.out.put(None)
        self.call.cancel()
        await self.channel.close()


def now_values(pv_total_w: float) -> dict[int, float]:
    values = {i: 500.0 + 37 * i for i, (c, u) in enumerate(CHANNELS) if u == "W"}
    values.update({i: 55.0 for i, (_, u) in enumerate(CHANNELS) if u == "%"})
    values.update({i: pv_total_w / len(PV) for i in PV})
    return values


@contextlib.asynccontextmanager
async def gateway_process(grpc_port: int) -> AsyncIterator[str]:
    """`emma gateway` in front of the services, serving web/dist as committed: yields its base URL."""
    proc = subprocess.Popen(
        [EMMA, "--log-level", "WARNING", "gateway", "--target", f"127.0.0.1:{grpc_port}", "--port", "0"],
        env={**os.environ, **BENCH_ENV},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = await asyncio.to_thread(proc.stdout.readline)
        if "http://" not in line:
            raise RuntimeError(f"emma gateway did not start: {line!r}")
        yield "http://" + line.split("http://", 1)[1].split()[0].rstrip("/")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def session_script(base: str, email: str, password: str) -> str:
    """An init script storing a fresh session as the app's login would (web/src/auth.ts)."""
    async with httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/v1/auth:login", json={"email": email, "password": password})
        r.raise_for_status()
        body = r.json()

    def epoch_ms(iso: str) -> int:
        return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)

    session = {
        "accessToken": body["accessToken"],
        "accessIssued": int(time.time() * 1000),
        "accessExpires": epoch_ms(body["accessTokenExpireTime"]),
        "refreshToken": body["refreshToken"],
        "refreshExpires": epoch_ms(body["refreshTokenExpireTime"]),
        "user": body["user"],
    }
    return f"localStorage.setItem('emma.session', {json.dumps(json.dumps(session))});"


def pv_text(watts: float) -> str:
    """The energy flow's PV value as the page prints it in en-US (web/src/format.ts power())."""
    kw = watts / 1000
    digits = 2 if abs(kw) < 10 else 1
    text = f"{kw:,.{digits}f}".rstrip("0").rstrip(".")
    return f"{text} kW"


async def one_run(
    browser: Browser, base: str, edge: Edge, email: str, password: str, run: int, samples: int
) -> dict[str, Any]:
    context = await browser.new_context(locale="en-US", timezone_id="UTC", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)
    await context.add_init_script(await session_script(base, email, password))
    page: Page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    transferred: dict[str, int] = {}

    async def count(response: Any) -> None:
        name = response.url.rsplit("/", 1)[-1]
        if name.startswith("app-"):
            sizes = await response.request.sizes()
            transferred[name] = int(sizes["responseBodySize"])

    page.on("response", lambda r: asyncio.ensure_future(count(r)))
    try:
        await edge.send(now_values(3000.0 + run))  # fresh values: nothing on the page is stale
        await page.goto(f"{base}/organizations/{EDGE.org}/sites/{EDGE.site}", wait_until="commit")
        handle = await page.wait_for_function(RENDERED % len(DEVICES), polling="raf")
        first_render_ms = float(await handle.json_value())
        await page.wait_for_selector("[data-link=live]")

        from_ingest, from_send = [], []
        rng = random.Random(run)
        for k in range(samples):
            total = 10_000.0 + 100.0 * (run * samples + k + 1)
            await page.evaluate(WATCH, pv_text(total))
            sent, acked = await edge.send({i: total / len(PV) for i in PV})
            seen_ms = float(await page.evaluate("window.__benchSeen"))
            from_ingest.append(seen_ms - acked * 1000)
            from_send.append(seen_ms - sent * 1000)
            # A random pause: the services read a site's live values every EMMA_LIVE_POLL_INTERVAL_S, and
            # a fixed pause would lock every sample to the same phase of that poll (one latency, 20 times).
            await asyncio.sleep(rng.uniform(0.1, 1.3))

        # The history chart's first (24-hour) draw, then the 30-day period.
        await page.locator("[data-chart=history]").scroll_into_view_if_needed()
        await page.wait_for_function("() => performance.getEntriesByName('chart:history:drawn').length > 0")
        clicked = float(await page.evaluate(CLICK_30_DAYS))
        drawn = await (await page.wait_for_function(DRAWN_30_DAYS, polling="raf")).json_value()
        if errors:
            raise RuntimeError(f"uncaught errors in the page: {errors}")
        return {
            "first_render_ms": first_render_ms,
            "live_from_ingest_ms": {
                "p50": percentile(from_ingest, 0.5),
                "p95": percentile(from_ingest, 0.95),
                "max": max(from_ingest),
            },
            "live_from_send_ms": {"p50": percentile(from_send, 0.5), "max": max(from_send)},
            "live_samples": samples,
            "chart_30d_total_ms": drawn["drawn"] - clicked,
            "chart_30d_draw_ms": drawn["drawn"] - drawn["data"],
            "chart_30d_points": drawn["points"],
            "transferred_bytes": transferred,
        }
    finally:
        await context.close()


def bundle_sizes() -> dict[str, float]:
    files = sorted(p for p in DIST.glob("app-*") if p.suffix in (".js", ".css"))
    raw = sum(p.stat().st_size for p in files)
    gz = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    return {"files": [p.name for p in files], "raw_kb": raw / 1024, "gzip_kb": gz / 1024}  # type: ignore[dict-item]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    days = args.days or (2 if args.quick else 30)
    samples = args.samples or (5 if args.quick else 20)
    with database() as dsn:
        version = await migrate(dsn)
        t0 = time.perf_counter()
        key, email, password, rows = await seed(dsn, days)
        seed_s = time.perf_counter() - t0
        async with cloud_process(dsn, "all", env=BENCH_ENV) as (port, _pid, _stats), gateway_process(port) as base:
            edge = Edge(port, key)
            await edge.start()
            beats = asyncio.create_task(edge.heartbeats())
            try:
                async with async_playwright() as pw:
                    executable = chromium()
                    browser = await pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
                    try:
                        runs = [
                            await one_run(browser, base, edge, email, password, r, samples) for r in range(args.runs)
                        ]
                        browser_name = f"{executable or 'playwright chromium'} {browser.version}"
                    finally:
                        await browser.close()
            finally:
                beats.cancel()
                await edge.close()
    sizes = bundle_sizes()
    first = [r["first_render_ms"] for r in runs]
    live = [r["live_from_ingest_ms"]["p95"] for r in runs]
    live_max = max(r["live_from_ingest_ms"]["max"] for r in runs)
    chart_total = [r["chart_30d_total_ms"] for r in runs]
    chart_draw = [r["chart_30d_draw_ms"] for r in runs]
    return {
        "machine": {**describe(version), "browser": browser_name},
        "command": "python -m bench.dashboard"
        + (" --quick" if args.quick else "")
        + (f" --runs {args.runs}" if args.runs != 3 else ""),
        "setup": {
            "live_poll_interval_s": os.environ.get(
                "EMMA_LIVE_POLL_INTERVAL_S", f"{IngestConfig.live_poll_interval_s} (the default)"
            ),
            "devices": len(DEVICES),
            "channels": len(CHANNELS),
            "history_days": days,
            "history_rows": rows,
            "seed_s": round(seed_s, 1),
        },
        "runs": runs,
        "first_render_ms": summary(first),
        "bundle": sizes,
        "live_from_ingest_p95_ms": summary(live),
        "chart_30d_total_ms": summary(chart_total),
        "chart_30d_draw_ms": summary(chart_draw),
        "goals": GOALS,
        "met": {
            "first_render": max(first) < GOALS["first_render_ms"],
            "bundle": float(sizes["gzip_kb"]) < GOALS["bundle_gzip_kb"],
            "live": live_max < GOALS["live_ms"],
            "chart_30d_total": max(chart_total) < GOALS["chart_30d_ms"],
            "chart_30d_draw": max(chart_draw) < GOALS["chart_30d_ms"],
        },
        "spread_note": f"{args.runs} runs; medians with min and max; live: p95 of {samples} values per run",
        "median_first_render_ms": statistics.median(first),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 days of history, 5 live values per run")
    p.add_argument("--runs", type=int, default=3, help="browser runs, each with an empty cache (default 3)")
    p.add_argument("--days", type=int, default=0, help="days of history (default 30; --quick 2)")
    p.add_argument("--samples", type=int, default=0, help="live values per run (default 20; --quick 5)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

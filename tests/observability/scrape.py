"""Prometheus scrapes for the observability tests: the text format parsed strictly, and sample lookups."""

from __future__ import annotations

import re

import httpx

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Prometheus text format 0.0.4, strictly: every sample line parses and follows its TYPE line."""
    out: Samples = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or family in typed, f"{name} before its # TYPE"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.setdefault(name, []).append((labels, float(m.group(3))))
    return out


def types(text: str) -> dict[str, str]:
    """Each family's # TYPE (counter, gauge, histogram)."""
    return {parts[2]: parts[3] for line in text.splitlines() if (parts := line.split())[:2] == ["#", "TYPE"]}


async def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """GET `url` as Prometheus does; (samples, types)."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(url)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(answer.text), types(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == x for k, x in labels.items()))

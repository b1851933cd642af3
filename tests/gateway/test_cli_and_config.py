"""`emma gateway` as a real process, and the configuration it reads."""

from __future__ import annotations

import re
import signal

import httpx
import pytest

from gateway.config import GatewayConfig
from gateway.errors import GatewayConfigError
from tests.support.cli_process import EmmaProcess, run_emma
from tests.support.gateway import SITE, Stack, error_of


async def test_emma_gateway_serves_the_api_and_stops_on_sigint(stack: Stack) -> None:
    proc = EmmaProcess("gateway", "--port", "0", "--target", stack.target, env={"EMMA_GATEWAY_DEADLINE_S": "5"})
    try:
        line = proc.wait_for("emma gateway: http://", timeout=30)
        url = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert url is not None, line
        async with httpx.AsyncClient(base_url=url.group(1), headers=stack.headers, timeout=10) as c:
            latest = await c.get(f"/v1/{SITE}/latestValues")
            missing = await c.get("/v1/nowhere")
            docs = await c.get("/docs")
        assert latest.status_code == 200, latest.text
        assert error_of(missing)["code"] == 404
        assert docs.status_code == 200
    finally:
        code = proc.stop(signal.SIGINT)
    assert code in (0, 130), proc.lines


def test_bad_settings_are_one_line_errors() -> None:
    result = run_emma("gateway", "--target", "nohost")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["emma gateway: error: --target='nohost' is not host:port"]
    result = run_emma("gateway", "--port", "0", env={"EMMA_GATEWAY_MAX_BODY_BYTES": "lots"})
    assert result.returncode == 1 and "EMMA_GATEWAY_MAX_BODY_BYTES='lots' is not an integer" in result.stderr


def test_config_from_env_and_flags() -> None:
    env = {
        "EMMA_GATEWAY_TARGET": "services:50051",
        "EMMA_GATEWAY_PORT": "9000",
        "EMMA_GATEWAY_DEADLINE_S": "2.5",
        "EMMA_GATEWAY_STREAM_DEADLINE_S": "0",
        "EMMA_GATEWAY_CORS_ORIGINS": "https://a.example, https://b.example/",
        "EMMA_GATEWAY_MAX_BODY_BYTES": "2048",
        "EMMA_GATEWAY_WRITE_RATE_PER_S": "0",
        "EMMA_GATEWAY_WRITE_BURST": "5",
        "EMMA_GATEWAY_CONNECTIONS": "2",
    }
    config = GatewayConfig.from_env(env)
    assert config.target == "services:50051" and config.port == 9000
    assert (config.deadline_s, config.stream_deadline_s) == (2.5, 0.0)
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert (config.max_body_bytes, config.write_rate_per_s, config.write_burst) == (2048, 0.0, 5)
    assert config.connections == 2 and GatewayConfig().connections == 1
    flags = GatewayConfig.from_env(env, target="127.0.0.1:1", host="0.0.0.0", port=0)
    assert (flags.target, flags.host, flags.port) == ("127.0.0.1:1", "0.0.0.0", 0)
    assert GatewayConfig.from_env({}) == GatewayConfig()
    for bad in (
        {"EMMA_GATEWAY_DEADLINE_S": "0"},
        {"EMMA_GATEWAY_DEADLINE_S": "nan"},
        {"EMMA_GATEWAY_PORT": "70000"},
        {"EMMA_GATEWAY_CORS_ORIGINS": "app.example"},
        {"EMMA_GATEWAY_KEEPALIVE_TIME_MS": "1000"},  # the services refuse pings more often than 10 s
        {"EMMA_GATEWAY_CONNECTIONS": "0"},
    ):
        with pytest.raises(GatewayConfigError, match=next(iter(bad))):
            GatewayConfig.from_env(bad)

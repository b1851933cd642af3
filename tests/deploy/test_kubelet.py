"""The rendered dev overlay run as the kubelet would run it: the migration Job first, then every
Deployment's container as a local process with the manifest's args and env (Secret and ConfigMap values)
on the test PostgreSQL, probed exactly as its probes say; then telemetry and a command end to end through
the gateway, and SIGTERM after the preStop hook with every process gone within its grace period.

A manifest whose port, probe, args or env does not match the code fails here (tests/deploy/kubelet.py
says what is rewritten: only ports, through the variables that carry them)."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from emma.edge.v1 import edge_link_pb2

from tests.deploy.kubelet import ROOT, Pod, by_kind, pods, probe, startup_budget_s, wait_exit
from tests.deploy.kustomize import render
from tests.support.cloud import new_edge
from tests.support.edge_client import EdgeStream, batch, battery_inventory, hello
from tests.support.gateway import USER_EMAIL, USER_PASSWORD, create_user

DEV = ROOT / "deploy" / "k8s" / "overlays" / "dev"
# The battery's dynamic limits first, so a command within 4 kW is accepted.
CHANNELS = [("battery_1/MaxDischargePower", "W"), ("battery_1/MaxChargePower", "W"), ("battery_1/Soc", "%")]


def cluster_secrets(database_url: str) -> dict[str, dict[str, str]]:
    """What an operator creates with `kubectl create secret` (docs/operations.md); emma-market is optional
    and left out, as on a cluster without market API tokens."""
    return {
        "emma-database": {"DATABASE_URL": database_url},
        "emma-keys": {
            "EMMA_JWT_SIGNING_KEY": secrets.token_urlsafe(48),
            "EMMA_PSEUDONYM_KEY": secrets.token_urlsafe(48),
        },
    }


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[dict[str, Pod]]:
    objects = render(DEV)
    running = pods(objects, cluster_secrets(database_url), tmp_path)
    try:
        yield running
    finally:
        for pod in running.values():
            pod.kill()


async def until_ready(pod: Pod) -> None:
    """The startup probe until it passes (within its period x failureThreshold), then readiness and liveness."""
    container = pod.container
    startup = container["startupProbe"]
    deadline = time.monotonic() + startup_budget_s(startup)
    while not await probe(pod, startup):
        assert pod.proc is not None
        assert pod.proc.poll() is None, f"exited {pod.proc.returncode}\n{pod.output()}"
        assert time.monotonic() < deadline, f"startup probe never passed\n{pod.output()}"
        await asyncio.sleep(0.2)
    assert await probe(pod, container["readinessProbe"]), pod.output()
    assert await probe(pod, container["livenessProbe"]), pod.output()


async def test_the_dev_overlay_runs_migrates_serves_end_to_end_and_drains(
    cluster: dict[str, Pod], database_url: str
) -> None:
    jobs = [
        name for name, pod in cluster.items() if "restartPolicy" in pod.spec and pod.spec["restartPolicy"] == "Never"
    ]
    assert jobs == ["emma-migrate"]
    migrate = cluster.pop("emma-migrate")
    migrate.start()
    code, _ = await asyncio.to_thread(wait_exit, migrate, 120.0)
    assert code == 0, migrate.output()
    assert any("applied" in line and "0001_schemas" in line for line in migrate.lines), migrate.output()

    # The Job's database is now usable: an organization, a user and an edge with its key.
    conn = await asyncpg.connect(database_url)
    try:
        edge, _, key = await new_edge(conn, "k8s")
    finally:
        await conn.close()
    await create_user(database_url, "acme")

    assert set(cluster) == {"emma-edgelink", "emma-api", "emma-market-worker", "emma-gateway"}
    for pod in cluster.values():
        pod.start()
    await asyncio.gather(*(until_ready(pod) for pod in cluster.values()))

    gateway = cluster["emma-gateway"]
    edgelink = cluster["emma-edgelink"]
    base_url = f"http://127.0.0.1:{gateway.ports[8080]}"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        # The dashboard, from where the image puts it (Containerfile: COPY web/dist, EMMA_GATEWAY_WEB_DIR).
        page = await http.get("/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        scripts = re.findall(r'src="/?(app-[A-Z0-9]{8}\.js)"', page.text)
        assert scripts and all((ROOT / "web" / "dist" / name).is_file() for name in scripts), page.text
        login = await http.post("/v1/auth:login", json={"email": USER_EMAIL, "password": USER_PASSWORD})
        assert login.status_code == 200, login.text
        http.headers["authorization"] = f"Bearer {login.json()['accessToken']}"

        # Telemetry: an edge's batch into the EdgeLink pod, read back through the gateway (api pod).
        stream = EdgeStream(edgelink.ports[50051])
        try:
            await stream.send(hello(str(edge), key, CHANNELS, devices=[battery_inventory()]))
            await stream.recv_kind("welcome")
            await stream.send(batch(1, time.time(), [(0, 0, 4000.0), (1, 0, 4000.0), (2, 0, 61.5)]))
            assert (await stream.recv_ack()).batch_seq == 1
            latest = await http.get(f"/v1/{edge}/devices/battery_1/latestValues", params={"channelIds": "Soc"})
            assert latest.status_code == 200, latest.text
            assert [v["value"] for v in latest.json()["values"]] == [61.5]

            # A command: created through the gateway (api pod), relayed by PostgreSQL to the EdgeLink pod
            # that holds the stream, acknowledged by the edge, and read back through the gateway.
            created = await http.post(
                f"/v1/{edge}/commands",
                params={"requestId": str(uuid.uuid4())},
                json={"channel": "battery_1/SetActivePower", "value": -3000},
            )
            assert created.status_code == 200, created.text
            name = created.json()["name"]
            delivered = (await stream.recv_kind("command", timeout=20)).command
            assert (delivered.name, delivered.value) == (name, -3000.0)
            for status in (edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED, edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED):
                await stream.send(
                    edge_link_pb2.ConnectRequest(
                        command_ack=edge_link_pb2.CommandAck(command=name, status=status, applied_value=-3000.0)
                    )
                )
            state = ""
            for _ in range(100):
                state = (await http.get(f"/v1/{name}")).json()["state"]
                if state == "COMMAND_STATE_EXECUTED":
                    break
                await asyncio.sleep(0.1)
            assert state == "COMMAND_STATE_EXECUTED"
        finally:
            await stream.close()

    # Prometheus, as the pods' annotations tell it: every pod answers on the annotated port and path (the
    # gateway on its own port, next to the dashboard), the api pod counted the command it created, the
    # edgelink pod the batch it stored and the command's transitions it saw.
    annotations = {
        name: d["spec"]["template"]["metadata"]["annotations"] for name, d in by_kind(render(DEV), "Deployment").items()
    }
    async with httpx.AsyncClient(timeout=10) as scraper:
        meta = annotations["emma-gateway"]
        port = gateway.ports[int(meta["prometheus.io/port"])]
        answer = await scraper.get(f"http://127.0.0.1:{port}{meta['prometheus.io/path']}")
        assert answer.status_code == 200 and 'emma_gateway_requests_total{method="POST"' in answer.text, answer.text
        for name in ("emma-edgelink", "emma-api", "emma-market-worker"):
            meta = annotations[name]
            assert meta["prometheus.io/scrape"] == "true", name
            port = cluster[name].ports[int(meta["prometheus.io/port"])]
            answer = await scraper.get(f"http://127.0.0.1:{port}{meta['prometheus.io/path']}")
            assert answer.status_code == 200, (name, answer.text)
            assert answer.headers["content-type"].startswith("text/plain; version=0.0.4"), name
            assert 'emma_db_pool_connections{pool="main",state="max"}' in answer.text, (name, answer.text)
            if name == "emma-api":
                create = "/emma.command.v1.CommandService/CreateCommand"
                created_ok = f'emma_rpc_duration_seconds_count{{method="{create}",code="OK"}} 1'
                assert created_ok in answer.text, answer.text
                assert 'emma_command_transitions_total{state="QUEUED"} 1' in answer.text, answer.text
            if name == "emma-edgelink":
                for sample in (
                    'emma_ingest_batches_total{result="stored"} 1',
                    "emma_ingest_points_total 3",
                    'emma_command_transitions_total{state="EXECUTED"} 1',
                    "emma_edge_connected 0",
                ):
                    assert sample in answer.text, (sample, answer.text)

    # Termination as the kubelet does it: the preStop hook (a sleep), then SIGTERM; every process must
    # drain and exit by itself before terminationGracePeriodSeconds (counted from the hook's start).
    pre_stop = {name: pod.container["lifecycle"]["preStop"]["sleep"]["seconds"] for name, pod in cluster.items()}
    await asyncio.sleep(max(pre_stop.values()))
    for pod in cluster.values():
        assert pod.proc is not None
        pod.proc.send_signal(signal.SIGTERM)
    grace = {name: pod.spec["terminationGracePeriodSeconds"] - pre_stop[name] for name, pod in cluster.items()}
    exits = await asyncio.gather(*(asyncio.to_thread(wait_exit, pod, grace[name]) for name, pod in cluster.items()))
    for (name, pod), (code, _) in zip(cluster.items(), exits, strict=True):
        if name == "emma-gateway" and code == -signal.SIGTERM:
            # uvicorn re-raises the SIGTERM it handled once its graceful shutdown is over (exit 143 in a
            # container, a normal termination for Kubernetes): drained if the lifespan shutdown finished.
            assert any("Application shutdown complete" in line for line in pod.lines), pod.output()
            continue
        assert code == 0, f"{name}: exit {code} within {grace[name]} s\n{pod.output()}"


def test_the_kubelet_reads_every_secret_and_config_map_the_dev_overlay_names(tmp_path: Path) -> None:
    objects = render(DEV)
    named = {
        source["secretRef"]["name"]
        for obj in objects
        if obj["kind"] in ("Deployment", "Job")
        for source in obj["spec"]["template"]["spec"]["containers"][0].get("envFrom", [])
        if "secretRef" in source and not source["secretRef"].get("optional")
    }
    assert named == {"emma-keys"}
    with pytest.raises(AssertionError, match="secretRef emma-keys does not exist"):
        pods(objects, {"emma-database": {"DATABASE_URL": "postgresql://x/y"}}, tmp_path)
    assert set(by_kind(objects, "ConfigMap")) and all(
        name.startswith("emma-config-") for name in by_kind(objects, "ConfigMap")
    )

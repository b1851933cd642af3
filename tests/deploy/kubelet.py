"""Just enough of a kubelet to run the rendered manifests as local processes: each container's args after
the image's entrypoint (`emma`), its env from the ConfigMaps and Secrets it names, and its probes done the
way Kubernetes does them (gRPC health, HTTP GET).

Ports are the one thing rewritten: a container port is mapped to a free port on this machine, and only
the env variables whose value is that port (and the probes on it) follow the mapping, so a manifest whose
env, probe and container port disagree still fails. A Service name in an env value (the gateway's target)
resolves as cluster DNS would, to the mapped port of the pod it selects.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.kustomize import Obj
from tests.support.cli_process import EMMA

ROOT = Path(__file__).resolve().parents[2]


def image_env() -> dict[str, str]:
    """The ENV of the Containerfile's final stage: what every container starts with."""
    final = (ROOT / "Containerfile").read_text().rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for match in re.finditer(r"^ENV ((?:.*\\\n)*.*)$", final, re.MULTILINE):
        for pair in shlex.split(match.group(1).replace("\\\n", " ")):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def image_files() -> dict[str, Path]:
    """What the final stage COPYs from the build context: {path in the image: the checkout's path}."""
    final = (ROOT / "Containerfile").read_text().rsplit("\nFROM ", 1)[1]
    return {
        dest.rstrip("/"): ROOT / source for source, dest in re.findall(r"^COPY (?!--)(\S+) (\S+)$", final, re.MULTILINE)
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def by_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@dataclass
class Pod:
    """One replica of a Deployment or Job: its single container run as a process."""

    name: str
    labels: dict[str, str]
    container: Obj
    spec: Obj
    ports: dict[int, int]  # container port -> port on this machine
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        if "command" in self.container:  # the manifests rely on the image's entrypoint
            raise AssertionError(f"{self.name}: command overrides the image's entrypoint")
        return [EMMA, *self.container.get("args", [])]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.env.get("HOME"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return f"--- {self.name} ---\n" + "\n".join(self.lines[-60:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def pods(objects: list[Obj], secrets: dict[str, dict[str, str]], home: Path) -> dict[str, Pod]:
    """A Pod for each Deployment and Job (one replica each: the dev overlay's count)."""
    config_maps = {name: o.get("data", {}) for name, o in by_kind(objects, "ConfigMap").items()}
    out: dict[str, Pod] = {}
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        spec = obj["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
        pod = Pod(obj["metadata"]["name"], obj["spec"]["template"]["metadata"]["labels"], container, spec, ports)
        pod.env = {**image_env(), **_env(pod, config_maps, secrets)}
        # Each env path is a path inside the container, mapped to this machine once: the emptyDirs
        # first, then the image's files, whose checkout may itself lie under a mounted path such as
        # /tmp (a clean clone in /tmp/ci) and must not be moved into the pod's folder.
        _mount_empty_dirs(pod, home / pod.name)
        _image_paths(pod)
        # What the image's base provides (this machine's Python stands in for it) and the pod's own folder.
        pod.env.update(PATH=os.environ["PATH"], HOME=str(home / pod.name))
        out[pod.name] = pod
    services = by_kind(objects, "Service")
    for pod in out.values():
        for name, value in pod.env.items():
            pod.env[name] = _resolve_services(value, services, out)
    return out


def _image_paths(pod: Pod) -> None:
    """A path in env that names files the image was built with points at them in this checkout."""
    for prefix, source in image_files().items():
        for name, value in pod.env.items():
            if value == prefix or value.startswith(prefix + "/"):
                pod.env[name] = str(source) + value[len(prefix) :]


def _mount_empty_dirs(pod: Pod, root: Path) -> None:
    """An emptyDir is a fresh folder of the pod: paths under its mountPath in env point there."""
    empty = {v["name"] for v in pod.spec.get("volumes", []) if "emptyDir" in v}
    for mount in pod.container.get("volumeMounts", []):
        if mount["name"] not in empty:
            continue
        folder = root / "volumes" / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        prefix = mount["mountPath"].rstrip("/")
        for name, value in pod.env.items():
            if value == prefix or value.startswith(prefix + "/"):
                pod.env[name] = str(folder) + value[len(prefix) :]


def _env(pod: Pod, config_maps: dict[str, dict[str, str]], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in pod.container.get("envFrom", []):
        kind, ref = ("configMapRef", config_maps) if "configMapRef" in source else ("secretRef", secrets)
        name = source[kind]["name"]
        if name in ref:
            env.update(ref[name])
        elif not source[kind].get("optional", False):
            raise AssertionError(f"{pod.name}: {kind} {name} does not exist (the pod would not start)")
    for var in pod.container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", source
            env[var["name"]] = f"{pod.name}-0"
            continue
        kind, ref = ("secretKeyRef", secrets) if "secretKeyRef" in source else ("configMapKeyRef", config_maps)
        key_ref = source[kind]
        values = ref.get(key_ref["name"])
        if values is None or key_ref["key"] not in values:
            raise AssertionError(f"{pod.name}: {var['name']} needs {kind} {key_ref['name']}/{key_ref['key']}")
        env[var["name"]] = values[key_ref["key"]]
    # The only rewrite: a variable that names a container port now names its free twin.
    return {name: str(pod.ports.get(int(value), value)) if value.isdigit() else value for name, value in env.items()}


def _resolve_services(value: str, services: dict[str, Obj], pods_: dict[str, Pod]) -> str:
    """`<service>:<port>` in a value becomes 127.0.0.1:<the selected pod's mapped target port>."""
    for name, service in services.items():
        for port in service["spec"]["ports"]:
            needle = f"{name}:{port['port']}"
            if needle not in value:
                continue
            selector = service["spec"]["selector"]
            (target,) = [p for p in pods_.values() if selector.items() <= p.labels.items()]
            container_port = next(
                p["containerPort"]
                for p in target.container["ports"]
                if p.get("name") == port["targetPort"] or p["containerPort"] == port["targetPort"]
            )
            value = value.replace(needle, f"127.0.0.1:{target.ports[container_port]}")
    return value


async def probe(pod: Pod, probe_spec: dict[str, Any]) -> bool:
    """One probe, as the kubelet does it: True when it succeeds."""
    timeout = float(probe_spec.get("timeoutSeconds", 1))
    if "grpc" in probe_spec:
        port = pod.ports.get(probe_spec["grpc"]["port"], probe_spec["grpc"]["port"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=probe_spec["grpc"].get("service", ""))
            try:
                answer = await stub.Check(request, timeout=timeout)
            except grpc.aio.AioRpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
    if "httpGet" in probe_spec:
        get = probe_spec["httpGet"]
        declared = {p.get("name"): p["containerPort"] for p in pod.container["ports"]}
        container_port = declared.get(get["port"], get["port"])
        port = pod.ports.get(container_port, container_port)
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.get(f"http://127.0.0.1:{port}{get['path']}")
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 400
    raise AssertionError(f"{pod.name}: unsupported probe {probe_spec}")


def startup_budget_s(probe_spec: dict[str, Any]) -> float:
    return float(probe_spec.get("periodSeconds", 10) * probe_spec.get("failureThreshold", 3))


def wait_exit(pod: Pod, timeout: float) -> tuple[int | None, float]:
    """(exit code, seconds it took) or (None, timeout) when it did not exit in time."""
    assert pod.proc is not None
    start = time.monotonic()
    try:
        code = pod.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None, timeout
    return code, time.monotonic() - start

"""EMMA_GRPC_WORKERS: the settings of processes that serve one port together."""

from __future__ import annotations

import pytest

from services.errors import ConfigError
from services.platform.config import ServerConfig
from services.platform.server import server_options


def test_one_worker_by_default_and_no_shared_port() -> None:
    config = ServerConfig.from_env({})
    assert (config.workers, config.worker_index, config.shares_port) == (1, 0, False)
    assert ("grpc.so_reuseport", 0) in server_options(config)


def test_workers_share_the_port_and_tell_their_replica_ids_and_metrics_ports_apart() -> None:
    env = {"EMMA_GRPC_WORKERS": "3", "EMMA_REPLICA_ID": "cloud-a", "EMMA_METRICS_PORT": "9400"}
    first = ServerConfig.from_env(env)
    third = ServerConfig.from_env({**env, "EMMA_GRPC_WORKER_INDEX": "2"})
    assert ("grpc.so_reuseport", 1) in server_options(first)
    assert (first.replica_id, first.metrics_port) == ("cloud-a", 9400)
    assert (third.replica_id, third.metrics_port, third.worker_index) == ("cloud-a-2", 9402, 2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EMMA_GRPC_WORKERS": "0"}, "EMMA_GRPC_WORKERS=0 must be between 1 and 64"),
        ({"EMMA_GRPC_WORKERS": "two"}, "EMMA_GRPC_WORKERS='two' is not an integer"),
        ({"EMMA_GRPC_WORKERS": "2", "EMMA_GRPC_WORKER_INDEX": "2"}, "EMMA_GRPC_WORKER_INDEX=2 must be between 0 and 1"),
    ],
)
def test_bad_worker_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig.from_env(env)

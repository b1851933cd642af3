"""Alarms: rules on channels, edges and market warnings; the engine that evaluates them on committed
telemetry outside the ingest path; alarms with every transition stored (docs/alarms.md).
"""

from __future__ import annotations

from typing import Any

from emma.alarm.v1 import alarm_pb2, alarm_pb2_grpc

from services.identity import Access
from services.platform.registration import ServiceSpec, Worker, service_spec
from services.platform.runtime import Runtime

# What other packages may use of alarm; everything else in services/alarm/ is private.
__all__ = ["DEPENDS_ON", "POLICY", "SERVICES", "TABLES"]

# The services this domain may import (their package faces); see docs/architecture.md. The registry
# to resolve a rule's channel, edge and device type inside the caller's organization; telemetry for
# the committed samples and latest values the engine judges; market for the border warnings
# MARKET_WARNING rules watch (read through its face, never its tables).
DEPENDS_ON: tuple[str, ...] = ("identity", "registry", "telemetry", "market")
# The tables this domain alone reads and writes (services/migrations/0016_alarm.sql, 0018, 0025).
TABLES: tuple[str, ...] = (
    "alarm.alarms",
    "alarm.deliveries",
    "alarm.engine_generation",
    "alarm.notification_channels",
    "alarm.recommendations",
    "alarm.rule_state",
    "alarm.rules",
    "alarm.transitions",
)


def _alarm(runtime: Runtime) -> Any:
    from services.alarm.servicer import AlarmServicer

    return AlarmServicer(runtime)


def _engine(runtime: Runtime) -> Worker:
    # The engine runs wherever the alarm service runs (`emma serve alarm`, `emma up`);
    # EMMA_ALARM_ENGINE=off leaves it idle. Replicas take turns through an advisory lock.
    from services.alarm.engine import engine_of

    return engine_of(runtime)


def _notifier(runtime: Runtime) -> Worker:
    # Next to the engine: attempts the webhook and e-mail deliveries queued with each transition.
    from services.alarm.notify import notifier_of

    return notifier_of(runtime.pool, runtime.config.env)


# The gRPC services this domain serves (services/catalog.py hosts them) and the engine.
SERVICES: tuple[ServiceSpec, ...] = (
    service_spec(
        "alarm",
        alarm_pb2,
        "AlarmService",
        alarm_pb2_grpc.add_AlarmServiceServicer_to_server,
        _alarm,
        workers=(_engine, _notifier),
    ),
)

_AL = "/emma.alarm.v1.AlarmService/"
# Alarms are their organization's data: members read them (VIEWER). Rules decide who gets woken up,
# and acknowledging, shelving or clearing takes an alarm off the operators' screens: OPERATOR.
POLICY: dict[str, Access] = {
    _AL + "CreateAlarmRule": Access.OPERATOR,
    _AL + "GetAlarmRule": Access.VIEWER,
    _AL + "ListAlarmRules": Access.VIEWER,
    _AL + "UpdateAlarmRule": Access.OPERATOR,
    _AL + "DeleteAlarmRule": Access.OPERATOR,
    _AL + "GetAlarm": Access.VIEWER,
    _AL + "ListAlarms": Access.VIEWER,
    _AL + "AcknowledgeAlarm": Access.OPERATOR,
    _AL + "ShelveAlarm": Access.OPERATOR,
    _AL + "ClearAlarm": Access.OPERATOR,
    _AL + "WatchAlarms": Access.VIEWER,
    # Sending a command changes a device: the operator's role, checked again by CommandService.
    _AL + "SendAlarmCommand": Access.OPERATOR,
    # A notification channel sends the organization's alarms to an address outside EMMA: ADMIN.
    _AL + "CreateNotificationChannel": Access.ADMIN,
    _AL + "GetNotificationChannel": Access.VIEWER,
    _AL + "ListNotificationChannels": Access.VIEWER,
    _AL + "DeleteNotificationChannel": Access.ADMIN,
    _AL + "ListNotificationDeliveries": Access.VIEWER,
    _AL + "GetDeviceHealth": Access.VIEWER,
    _AL + "GetSiteHealth": Access.VIEWER,
    _AL + "GetDeviceProjection": Access.VIEWER,
    # A recommender service account of the organization (a member of none) or an operator: the
    # servicer checks which (services.identity.service_account_role). Posts are rate-limited per
    # site and the creator is stored.
    _AL + "CreateRecommendation": Access.USER,
    _AL + "ListRecommendations": Access.VIEWER,
    _AL + "AcceptRecommendation": Access.OPERATOR,
    _AL + "DismissRecommendation": Access.OPERATOR,
}

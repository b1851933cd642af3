"""AlarmService: parses, checks access, delegates to rules.py and alarms.py. WatchAlarms fans one
LISTEN per process out to the streams of that process."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from emma.alarm.v1 import alarm_pb2 as pb
from emma.alarm.v1 import alarm_pb2_grpc
from google.protobuf import empty_pb2

from services.alarm import alarms, health, notify, recommendations, rules
from services.alarm.commands import CommandClient, command_of
from services.alarm.config import NotifyConfig, RecommendationConfig
from services.errors import invalid_field, not_found
from services.identity import (
    SERVICE_ACCOUNT_RECOMMENDER,
    Access,
    Caller,
    caller,
    note_audit,
    service_account_role,
)
from services.names import ID_PATTERN, parse_organization, parse_site
from services.pagination import Page
from services.platform.idempotency import run_once
from services.platform.migrations import Conn
from services.platform.notify import Fanout, Gap, watch_gap
from services.platform.rpc import Context
from services.platform.runtime import Runtime

WATCH_QUEUE = 1000
_OPEN = frozenset({pb.ALARM_STATE_ACTIVE, pb.ALARM_STATE_ACKNOWLEDGED, pb.ALARM_STATE_SHELVED})
_SVC = "/emma.alarm.v1.AlarmService/"

_Change = tuple[str, uuid.UUID, int]  # (org, alarm id, transition seq)
_Act = Callable[[Conn, str, uuid.UUID, str], Awaitable[pb.Alarm]]


def _parse_change(payload: str) -> _Change | None:
    """A NOTIFY payload of the alarms' channel as (org, alarm id, seq); None when it is not one."""
    try:
        data = json.loads(payload)
        return (str(data["org"]), uuid.UUID(data["alarm"]), int(data["seq"]))
    except (ValueError, KeyError, TypeError):
        return None


def _rule_id(value: str) -> str:
    if not ID_PATTERN.match(value):
        raise invalid_field("alarm_rule_id", "1-63 lowercase letters, digits and hyphens, starting with a letter")
    return value


class AlarmServicer(alarm_pb2_grpc.AlarmServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._pool = runtime.pool
        self._watchers = Fanout(runtime.dsn, alarms.NOTIFY_CHANNEL, _parse_change, WATCH_QUEUE)
        self._notify = NotifyConfig.from_env(runtime.config.env or os.environ)
        self._commands = CommandClient(self._notify.command_target)
        self._recommendations = RecommendationConfig.from_env(runtime.config.env or os.environ)

    async def start(self) -> None:
        await self._watchers.start()

    async def stop(self) -> None:
        await self._watchers.stop()
        await self._commands.close()

    # ------------------------------------------------------------------------------------ rules

    async def CreateAlarmRule(self, request: pb.CreateAlarmRuleRequest, context: Context) -> pb.AlarmRule:
        org = parse_organization(request.parent, "parent")
        rule_id = _rule_id(request.alarm_rule_id)
        rules.check_rule(request.alarm_rule, org)
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.parent)
        note_audit(rules.rule_name(org, rule_id))

        async def change(conn: Conn) -> pb.AlarmRule:
            await rules.check_targets(conn, request.alarm_rule)
            return await rules.create(conn, org, rule_id, request.alarm_rule)

        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "CreateAlarmRule",
                request=request,
                request_id=request.request_id,
                response_type=pb.AlarmRule,
                change=change,
            )

    async def GetAlarmRule(self, request: pb.GetAlarmRuleRequest, context: Context) -> pb.AlarmRule:
        org, rule_id = rules.parse_rule_name(request.name)
        caller(context).require_org(org, Access.VIEWER, resource=request.name)
        async with self._pool.acquire() as conn:
            return (await rules.get(conn, org, rule_id)).rule

    async def ListAlarmRules(self, request: pb.ListAlarmRulesRequest, context: Context) -> pb.ListAlarmRulesResponse:
        org = parse_organization(request.parent, "parent")
        page = Page.of("ListAlarmRules", request)
        caller(context).require_org(org, Access.VIEWER, resource=request.parent)
        async with self._pool.acquire() as conn:
            found = await rules.list_rules(conn, org, page.offset, page.limit)
        return pb.ListAlarmRulesResponse(alarm_rules=page.rows(found), next_page_token=page.next_token(found))

    async def UpdateAlarmRule(self, request: pb.UpdateAlarmRuleRequest, context: Context) -> pb.AlarmRule:
        org, rule_id = rules.parse_rule_name(request.alarm_rule.name, "alarm_rule.name")
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.alarm_rule.name)
        note_audit(request.alarm_rule.name)

        async def change(conn: Conn) -> pb.AlarmRule:
            stored = await rules.get(conn, org, rule_id, for_update=True)
            updated = rules.merged(stored.rule, request.alarm_rule, request.update_mask)
            rules.check_rule(updated, org)
            await rules.check_targets(conn, updated)
            return await rules.update(conn, stored, updated)

        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "UpdateAlarmRule",
                request=request,
                request_id=request.request_id,
                response_type=pb.AlarmRule,
                change=change,
            )

    async def DeleteAlarmRule(self, request: pb.DeleteAlarmRuleRequest, context: Context) -> empty_pb2.Empty:
        org, rule_id = rules.parse_rule_name(request.name)
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.name)
        note_audit(request.name)

        async def change(conn: Conn) -> empty_pb2.Empty:
            stored = await rules.get(conn, org, rule_id, for_update=True)
            await alarms.close_open_of_rule(conn, stored.pk, me.actor, "its rule was deleted")
            await rules.delete(conn, stored)
            return empty_pb2.Empty()

        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "DeleteAlarmRule",
                request=request,
                request_id=request.request_id,
                response_type=empty_pb2.Empty,
                change=change,
            )

    # ----------------------------------------------------------------------------------- alarms

    async def GetAlarm(self, request: pb.GetAlarmRequest, context: Context) -> pb.Alarm:
        org, alarm_id = alarms.parse_alarm_name(request.name)
        caller(context).require_org(org, Access.VIEWER, resource=request.name)
        async with self._pool.acquire() as conn:
            return await alarms.with_transitions(conn, await alarms.get(conn, org, alarm_id))

    async def ListAlarms(self, request: pb.ListAlarmsRequest, context: Context) -> pb.ListAlarmsResponse:
        org = parse_organization(request.parent, "parent")
        page = Page.of("ListAlarms", request)
        if len(request.states) > 4:
            raise invalid_field("states", "at most 4 states")
        if pb.ALARM_STATE_UNSPECIFIED in request.states:
            raise invalid_field("states", "ALARM_STATE_UNSPECIFIED is not a state")
        if request.site and parse_site(request.site, "site").org != org:
            raise invalid_field("site", f"must be a site of {request.parent}")
        if request.rule and rules.parse_rule_name(request.rule, "rule")[0] != org:
            raise invalid_field("rule", f"must be a rule of {request.parent}")
        caller(context).require_org(org, Access.VIEWER, resource=request.parent)
        f = alarms.AlarmFilter(
            states=frozenset(request.states) or _OPEN,
            min_severity=request.min_severity,
            site=request.site,
            rule=request.rule,
            raised_after=request.raised_after_time.ToDatetime(dt.UTC)
            if request.HasField("raised_after_time")
            else None,
        )
        async with self._pool.acquire() as conn:
            found = await alarms.list_alarms(conn, org, f, page.offset, page.limit)
        return pb.ListAlarmsResponse(alarms=page.rows(found), next_page_token=page.next_token(found))

    async def _operate(
        self,
        method: str,
        request: pb.AcknowledgeAlarmRequest | pb.ShelveAlarmRequest | pb.ClearAlarmRequest,
        context: Context,
        act: _Act,
    ) -> pb.Alarm:
        org, alarm_id = alarms.parse_alarm_name(request.name)
        alarms.check_note(request.note)
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.name)
        note_audit(request.name)

        async def change(conn: Conn) -> pb.Alarm:
            return await act(conn, org, alarm_id, me.actor)

        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + method,
                request=request,
                request_id=request.request_id,
                response_type=pb.Alarm,
                change=change,
            )

    async def AcknowledgeAlarm(self, request: pb.AcknowledgeAlarmRequest, context: Context) -> pb.Alarm:
        async def act(conn: Conn, org: str, alarm_id: uuid.UUID, actor: str) -> pb.Alarm:
            return await alarms.acknowledge(conn, org, alarm_id, actor, request.note)

        return await self._operate("AcknowledgeAlarm", request, context, act)

    async def ShelveAlarm(self, request: pb.ShelveAlarmRequest, context: Context) -> pb.Alarm:
        if not request.HasField("shelve_until_time"):
            raise invalid_field("shelve_until_time", "required")
        until = request.shelve_until_time.ToDatetime(dt.UTC)
        now = dt.datetime.now(dt.UTC)
        if not now < until <= now + alarms.MAX_SHELVE:
            raise invalid_field(
                "shelve_until_time", f"must be in the future and at most {alarms.MAX_SHELVE.days} days ahead"
            )

        async def act(conn: Conn, org: str, alarm_id: uuid.UUID, actor: str) -> pb.Alarm:
            return await alarms.shelve(conn, org, alarm_id, until, actor, request.note)

        return await self._operate("ShelveAlarm", request, context, act)

    async def ClearAlarm(self, request: pb.ClearAlarmRequest, context: Context) -> pb.Alarm:
        async def act(conn: Conn, org: str, alarm_id: uuid.UUID, actor: str) -> pb.Alarm:
            return await alarms.clear(conn, org, alarm_id, actor, request.note)

        return await self._operate("ClearAlarm", request, context, act)

    async def WatchAlarms(self, request: pb.WatchAlarmsRequest, context: Context) -> AsyncIterator[pb.AlarmChange]:
        org = parse_organization(request.parent, "parent")
        caller(context).require_org(org, Access.VIEWER, resource=request.parent)
        with self._watchers.subscribe() as queue:
            await self._watchers.wait_connected()
            # Headers go out once the subscription is in place: a client that waits for them misses
            # no change committed afterwards.
            await context.send_initial_metadata(())
            while True:
                item = await queue.get()
                if isinstance(item, Gap):
                    raise watch_gap(item, f"{WATCH_QUEUE} changes", "re-list")
                change_org, alarm_id, seq = item
                if change_org != org:
                    continue
                async with self._pool.acquire() as conn:
                    change = await alarms.change_of(conn, alarm_id, seq)
                if change is None:
                    continue
                shelved = change.alarm.state == pb.ALARM_STATE_SHELVED
                if (
                    shelved
                    and not request.include_shelved
                    and change.transition.kind != pb.ALARM_TRANSITION_KIND_SHELVED
                ):
                    continue
                yield change

    # ------------------------------------------------------------------------ commands from alarms

    async def SendAlarmCommand(
        self, request: pb.SendAlarmCommandRequest, context: Context
    ) -> pb.SendAlarmCommandResponse:
        org, alarm_id = alarms.parse_alarm_name(request.name)
        if not request.request_id:
            raise invalid_field("request_id", "required: a retry with the same id sends nothing again")
        if request.proposed_command < 0:
            raise invalid_field("proposed_command", "an index, 0 or more")
        me = caller(context)
        me.require_org(org, Access.OPERATOR, resource=request.name)
        note_audit(request.name)
        authorization = next((str(v) for k, v in context.invocation_metadata() or () if k == "authorization"), "")

        async def change(conn: Conn) -> pb.SendAlarmCommandResponse:
            row = await alarms.get(conn, org, alarm_id, for_update=True)
            if row["clear_time"] is not None:
                raise alarms.cleared_conflict(row)
            alarm = alarms.to_message(row, dt.datetime.now(dt.UTC))
            if request.proposed_command >= len(alarm.proposed_commands):
                raise invalid_field(
                    "proposed_command", f"{request.name} has {len(alarm.proposed_commands)} proposed commands"
                )
            proposed = alarm.proposed_commands[request.proposed_command]
            edge, command = command_of(alarm, proposed)
            created = await self._commands.create(edge, command, request.request_id, authorization)
            updated = await alarms.command_sent(conn, org, alarm_id, me.actor, created.name, proposed.title)
            return pb.SendAlarmCommandResponse(command=created.name, alarm=updated)

        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "SendAlarmCommand",
                request=request,
                request_id=request.request_id,
                response_type=pb.SendAlarmCommandResponse,
                change=change,
            )

    # ------------------------------------------------------------------------ notification channels

    async def CreateNotificationChannel(
        self, request: pb.CreateNotificationChannelRequest, context: Context
    ) -> pb.NotificationChannel:
        org = parse_organization(request.parent, "parent")
        if not ID_PATTERN.match(request.notification_channel_id):
            raise invalid_field(
                "notification_channel_id", "1-63 lowercase letters, digits and hyphens, starting with a letter"
            )
        me = caller(context)
        me.require_org(org, Access.ADMIN, resource=request.parent)
        await notify.check_channel(request.notification_channel, self._notify)
        note_audit(rules.channel_name(org, request.notification_channel_id))

        async def change(conn: Conn) -> pb.NotificationChannel:
            return await notify.create(conn, org, request.notification_channel_id, request.notification_channel)

        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "CreateNotificationChannel",
                request=request,
                request_id=request.request_id,
                response_type=pb.NotificationChannel,
                change=change,
            )

    async def GetNotificationChannel(
        self, request: pb.GetNotificationChannelRequest, context: Context
    ) -> pb.NotificationChannel:
        org, channel_id = rules.parse_channel_name(request.name)
        caller(context).require_org(org, Access.VIEWER, resource=request.name)
        async with self._pool.acquire() as conn:
            return (await notify.get(conn, org, channel_id))[1]

    async def ListNotificationChannels(
        self, request: pb.ListNotificationChannelsRequest, context: Context
    ) -> pb.ListNotificationChannelsResponse:
        org = parse_organization(request.parent, "parent")
        page = Page.of("ListNotificationChannels", request)
        caller(context).require_org(org, Access.VIEWER, resource=request.parent)
        async with self._pool.acquire() as conn:
            found = await notify.list_channels(conn, org, page.offset, page.limit)
        return pb.ListNotificationChannelsResponse(
            notification_channels=page.rows(found), next_page_token=page.next_token(found)
        )

    async def DeleteNotificationChannel(
        self, request: pb.DeleteNotificationChannelRequest, context: Context
    ) -> empty_pb2.Empty:
        org, channel_id = rules.parse_channel_name(request.name)
        me = caller(context)
        me.require_org(org, Access.ADMIN, resource=request.name)
        note_audit(request.name)

        async def change(conn: Conn) -> empty_pb2.Empty:
            await notify.delete(conn, org, channel_id)
            return empty_pb2.Empty()

        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "DeleteNotificationChannel",
                request=request,
                request_id=request.request_id,
                response_type=empty_pb2.Empty,
                change=change,
            )

    async def ListNotificationDeliveries(
        self, request: pb.ListNotificationDeliveriesRequest, context: Context
    ) -> pb.ListNotificationDeliveriesResponse:
        org, channel_id = rules.parse_channel_name(request.parent, "parent")
        page = Page.of("ListNotificationDeliveries", request)
        caller(context).require_org(org, Access.VIEWER, resource=request.parent)
        async with self._pool.acquire() as conn:
            found = await notify.list_deliveries(conn, org, channel_id, page.offset, page.limit)
        return pb.ListNotificationDeliveriesResponse(
            deliveries=page.rows(found), next_page_token=page.next_token(found)
        )

    # ------------------------------------------------------------------------ health and projections

    async def GetDeviceHealth(self, request: pb.GetDeviceHealthRequest, context: Context) -> pb.Health:
        device = health.device_of(request.name, "health")
        caller(context).require_org(device.edge.org, Access.VIEWER, resource=request.name)
        async with self._pool.acquire() as conn:
            return await health.device_health(conn, request.name)

    async def GetSiteHealth(self, request: pb.GetSiteHealthRequest, context: Context) -> pb.Health:
        site = health.site_of(request.name)
        caller(context).require_org(site.org, Access.VIEWER, resource=request.name)
        async with self._pool.acquire() as conn:
            return await health.site_health(conn, site)

    async def GetDeviceProjection(self, request: pb.GetDeviceProjectionRequest, context: Context) -> pb.Projection:
        device = health.device_of(request.name, "projection")
        window = request.window.ToTimedelta() if request.HasField("window") else health.DEFAULT_WINDOW
        caller(context).require_org(device.edge.org, Access.VIEWER, resource=request.name)
        async with self._pool.acquire() as conn:
            return await health.projection(conn, request.name, window)

    # ---------------------------------------------------------------------------- recommendations

    async def CreateRecommendation(
        self, request: pb.CreateRecommendationRequest, context: Context
    ) -> pb.Recommendation:
        site = parse_site(request.parent, "parent")
        me = caller(context)
        async with self._pool.acquire() as conn:
            creator = await self._poster(conn, me, site.org, request.parent)
            recommendations.check(request.recommendation, site)
            note_audit(request.parent)

            async def change(conn: Conn) -> pb.Recommendation:
                await recommendations.check_assets(conn, site, request.recommendation)
                return await recommendations.create(
                    conn, site, request.recommendation, creator, self._recommendations.per_hour
                )

            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + "CreateRecommendation",
                request=request,
                request_id=request.request_id,
                response_type=pb.Recommendation,
                change=change,
            )

    @staticmethod
    async def _poster(conn: Conn, me: Caller, org: str, resource: str) -> str:
        """Who may post to `org`, as the recommendation's creator: a member needs OPERATOR (a viewer
        gets ROLE_INSUFFICIENT, as everywhere); a non-member must be a RECOMMENDER service account of
        the organization, and anyone else gets RESOURCE_NOT_FOUND like a stranger to the tenant."""
        if me.is_member(org):
            me.require_org(org, Access.OPERATOR, resource=resource)
            return me.actor
        if me.kind == "user":
            grant = await service_account_role(conn, me.user_id, org)
            if grant is not None and grant.role == SERVICE_ACCOUNT_RECOMMENDER:
                # Its audit row belongs in its organization, of which it is no member.
                note_audit(orgs=[org])
                return grant.name
        raise not_found(resource)

    async def ListRecommendations(
        self, request: pb.ListRecommendationsRequest, context: Context
    ) -> pb.ListRecommendationsResponse:
        site = parse_site(request.parent, "parent")
        page = Page.of("ListRecommendations", request)
        caller(context).require_org(site.org, Access.VIEWER, resource=request.parent)
        async with self._pool.acquire() as conn:
            found = await recommendations.list_site(conn, site, request.state, page.offset, page.limit)
        return pb.ListRecommendationsResponse(recommendations=page.rows(found), next_page_token=page.next_token(found))

    async def _decide(
        self,
        method: str,
        request: pb.AcceptRecommendationRequest | pb.DismissRecommendationRequest,
        state: int,
        context: Context,
    ) -> pb.Recommendation:
        site, _ = recommendations.parse_name(request.name)
        me = caller(context)
        me.require_org(site.org, Access.OPERATOR, resource=request.name)
        note_audit(request.name)

        async def change(conn: Conn) -> pb.Recommendation:
            return await recommendations.decide(conn, request.name, state, me.actor, request.note)

        async with self._pool.acquire() as conn:
            return await run_once(
                conn,
                actor=me.actor,
                method=_SVC + method,
                request=request,
                request_id=request.request_id,
                response_type=pb.Recommendation,
                change=change,
            )

    async def AcceptRecommendation(
        self, request: pb.AcceptRecommendationRequest, context: Context
    ) -> pb.Recommendation:
        return await self._decide("AcceptRecommendation", request, pb.RECOMMENDATION_STATE_ACCEPTED, context)

    async def DismissRecommendation(
        self, request: pb.DismissRecommendationRequest, context: Context
    ) -> pb.Recommendation:
        return await self._decide("DismissRecommendation", request, pb.RECOMMENDATION_STATE_DISMISSED, context)

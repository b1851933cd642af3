"""Recommendations posted by a service account through the real AlarmService: a RECOMMENDER account of
the organization posts (named as the creator, audited in its organization, rate-limited like anyone),
another organization's account, a person who is no member and a viewer are refused."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from emma.alarm.v1 import alarm_pb2 as pb
from emma.alarm.v1 import alarm_pb2_grpc
from emma.identity.v1 import identity_pb2, identity_pb2_grpc

from tests.services.alarm.test_engine import _error
from tests.support.cloud import Host, new_edge
from tests.support.identity import authed_channel, grant


async def _account(identity: identity_pb2_grpc.IdentityServiceStub, org: str, account_id: str) -> str:
    """Create a recommender service account of `org` (as its admin) and log in as it: its access token."""
    created = await identity.CreateServiceAccount(
        identity_pb2.CreateServiceAccountRequest(
            parent=f"organizations/{org}",
            service_account_id=account_id,
            service_account=identity_pb2.ServiceAccount(role=identity_pb2.SERVICE_ACCOUNT_ROLE_RECOMMENDER),
        )
    )
    login = await identity.Login(identity_pb2.LoginRequest(email=created.login, password=created.password))
    return login.access_token


async def test_a_recommender_account_posts_others_are_refused_and_the_rate_limit_holds(
    host: Host, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMMA_ALARM_RECOMMENDATIONS_PER_HOUR", "2")
    edge, _, _ = await new_edge(db, "advised")
    site = str(edge.site_name)
    acme_admin = await grant(db, "acme", "admin")
    other_admin = await grant(db, "rival", "admin")
    viewer = await grant(db, "acme", "viewer")
    stranger = await grant(db, "rival", "operator")

    def post(title: str) -> pb.CreateRecommendationRequest:
        rec = pb.Recommendation(title=title, source="rl-dispatch-v3", confidence=0.7)
        return pb.CreateRecommendationRequest(parent=site, recommendation=rec)

    async with (
        host(["identity", "alarm"]) as (server, _),
        authed_channel(server.port, acme_admin.token) as acme_ch,
        authed_channel(server.port, other_admin.token) as rival_ch,
    ):
        ours = await _account(identity_pb2_grpc.IdentityServiceStub(acme_ch), "acme", "advisor")
        theirs = await _account(identity_pb2_grpc.IdentityServiceStub(rival_ch), "rival", "advisor")
        async with authed_channel(server.port, ours) as account_ch:
            api = alarm_pb2_grpc.AlarmServiceStub(account_ch)
            first = await api.CreateRecommendation(post("charge at 02:00"))
            assert first.creator == "organizations/acme/serviceAccounts/advisor"
            assert first.state == pb.RECOMMENDATION_STATE_OPEN
            # Validation is the same as for anyone: a bad confidence names the field.
            bad = post("x")
            bad.recommendation.confidence = 2
            _, reason, meta = await _error(api.CreateRecommendation(bad))
            assert (reason, meta["field"]) == ("FIELD_INVALID", "recommendation.confidence")
            # The account may post and nothing else: reading the recommendations needs a membership.
            code, reason, _ = await _error(api.ListRecommendations(pb.ListRecommendationsRequest(parent=site)))
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
            await api.CreateRecommendation(post("reduce the export limit"))
            # The per-site limit (2 an hour here) binds the account like any poster.
            code, reason, meta = await _error(api.CreateRecommendation(post("third")))
            assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") and "retry_after_ms" in meta

        # Another organization's account, a person of another organization and a viewer are refused;
        # the first two as strangers to the tenant.
        for token, expected in (
            (theirs, (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")),
            (stranger.token, (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")),
            (viewer.token, (grpc.StatusCode.PERMISSION_DENIED, "ROLE_INSUFFICIENT")),
        ):
            async with authed_channel(server.port, token) as ch:
                code, reason, meta = await _error(
                    alarm_pb2_grpc.AlarmServiceStub(ch).CreateRecommendation(post("not yours"))
                )
                assert (code, reason) == expected
                if code == grpc.StatusCode.NOT_FOUND:
                    assert meta["resource"] == site

        # An operator decides on the account's post as on any other.
        async with authed_channel(server.port, acme_admin.token) as ch:
            decided = await alarm_pb2_grpc.AlarmServiceStub(ch).AcceptRecommendation(
                pb.AcceptRecommendationRequest(name=first.name)
            )
            assert decided.creator == first.creator and decided.decided_by == acme_admin.name

    # The posts are audit rows of the account's organization, by the account's user.
    account_user = await db.fetchval(
        "SELECT user_id FROM identity.service_accounts WHERE org_id = 'acme' AND account_id = 'advisor'"
    )
    rows = await db.fetch(
        """SELECT org_id, actor, result_code FROM identity.audit_entries
           WHERE method = '/emma.alarm.v1.AlarmService/CreateRecommendation' AND actor = $1 ORDER BY id""",
        f"users/{account_user}",
    )
    assert [(r["org_id"], r["result_code"]) for r in rows] == [
        ("acme", 0),
        ("acme", grpc.StatusCode.INVALID_ARGUMENT.value[0]),
        ("acme", 0),
        ("acme", grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]),
    ]

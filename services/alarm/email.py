"""E-mail deliveries through the configured SMTP server (stdlib smtplib, run in a worker thread so the
event loop never waits on the mail server)."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage

from emma.alarm.v1 import alarm_pb2 as pb

from services.alarm.config import NotifyConfig

TIMEOUT_S = 30.0


def _state(alarm: pb.Alarm) -> str:
    return pb.AlarmState.Name(alarm.state).removeprefix("ALARM_STATE_")


def compose(config: NotifyConfig, to: Sequence[str], change: pb.AlarmChange) -> EmailMessage:
    alarm, transition = change.alarm, change.transition
    severity = pb.AlarmSeverity.Name(alarm.severity).removeprefix("ALARM_SEVERITY_")
    what = pb.AlarmTransitionKind.Name(transition.kind).removeprefix("ALARM_TRANSITION_KIND_")
    message = EmailMessage()
    message["From"] = config.smtp_from
    message["To"] = ", ".join(to)
    message["Subject"] = f"[EMMA {severity}] {alarm.rule_display_name}: {alarm.message}"[:250]
    lines = [
        f"{what} at {transition.time.ToDatetime().isoformat()}Z by {transition.actor}",
        f"alarm: {alarm.name}",
        f"source: {alarm.source}",
        f"state: {_state(alarm)}, severity: {severity}",
        f"message: {alarm.message}",
    ]
    if transition.note:
        lines.append(f"note: {transition.note}")
    if alarm.remediation_steps:
        lines.append("")
        lines.append("What to do:")
        lines.extend(f"  {i}. {step}" for i, step in enumerate(alarm.remediation_steps, 1))
    message.set_content("\n".join(lines) + "\n")
    return message


def _send(config: NotifyConfig, message: EmailMessage) -> None:
    with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=TIMEOUT_S) as smtp:
        if config.smtp_starttls:
            smtp.starttls()
        if config.smtp_username:
            smtp.login(config.smtp_username, config.smtp_password)
        smtp.send_message(message)


async def send(config: NotifyConfig, to: Sequence[str], change: pb.AlarmChange) -> str:
    """One attempt; "" when the SMTP server took the message, else why it failed."""
    if not config.smtp_host:
        return "no SMTP server configured (EMMA_ALARM_SMTP_HOST)"
    try:
        await asyncio.to_thread(_send, config, compose(config, to, change))
    except (OSError, smtplib.SMTPException) as e:
        return f"{type(e).__name__}: {e}"[:500]
    return ""

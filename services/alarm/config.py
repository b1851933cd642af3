"""The alarm engine's settings from EMMA_ALARM_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.env import env_flag, env_float, env_int
from services.alarm.errors import AlarmConfigError


@dataclass(frozen=True)
class EngineConfig:
    """enabled: EMMA_ALARM_ENGINE (on/off). interval_s: EMMA_ALARM_INTERVAL_S, seconds between two
    evaluations (default 1 s: a sample becomes a visible alarm within about a second of its commit).
    samples_per_channel: EMMA_ALARM_SAMPLES_PER_CHANNEL, the most samples of one channel judged per
    evaluation; the rest wait for the next one, so one chatty channel cannot stall the others.
    stats_interval_s: EMMA_ALARM_STATS_INTERVAL_S, how often the `alarm engine stats` line is logged."""

    enabled: bool = True
    interval_s: float = 1.0
    samples_per_channel: int = 1000
    stats_interval_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineConfig:
        err = AlarmConfigError
        return cls(
            enabled=env_flag(env, "EMMA_ALARM_ENGINE", cls.enabled, err),
            interval_s=env_float(env, "EMMA_ALARM_INTERVAL_S", cls.interval_s, 0.01, err),
            samples_per_channel=env_int(env, "EMMA_ALARM_SAMPLES_PER_CHANNEL", cls.samples_per_channel, 1, None, err),
            stats_interval_s=env_float(env, "EMMA_ALARM_STATS_INTERVAL_S", cls.stats_interval_s, 0.5, err),
        )


@dataclass(frozen=True)
class NotifyConfig:
    """Notification channels and deliveries (docs/alarms.md, "Notification channels").

    webhook_private: EMMA_ALARM_WEBHOOK_PRIVATE=allow lets webhooks reach loopback and private
    addresses over plain http (development and tests); the default, refuse, is the production mode
    that keeps a webhook from being turned against the cloud's own network (SSRF).
    attempts, retry_base_s, retry_max_s: EMMA_ALARM_DELIVERY_ATTEMPTS, EMMA_ALARM_RETRY_BASE_S,
    EMMA_ALARM_RETRY_MAX_S: a failed attempt is retried after base * 2^(attempt-1) seconds, capped.
    smtp_*: EMMA_ALARM_SMTP_HOST (empty: no e-mail channels), _PORT, _FROM, _STARTTLS, _USERNAME,
    _PASSWORD. command_target: EMMA_ALARM_COMMAND_TARGET, CommandService's address for
    SendAlarmCommand; empty (the default): the address this process's own server is bound to, found
    when first needed (services/alarm/commands.py), since a configured port of 0 or a server config
    other than EMMA_GRPC_PORT's says nothing about where the server really listens."""

    webhook_private: bool = False
    webhook_timeout_s: float = 10.0
    attempts: int = 6
    retry_base_s: float = 5.0
    retry_max_s: float = 600.0
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "emma@localhost"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    command_target: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NotifyConfig:
        err = AlarmConfigError
        private = env.get("EMMA_ALARM_WEBHOOK_PRIVATE", "refuse").strip().lower()
        if private not in ("allow", "refuse"):
            raise err(f"EMMA_ALARM_WEBHOOK_PRIVATE={private!r}: expected allow or refuse")
        port = env_int(env, "EMMA_ALARM_SMTP_PORT", cls.smtp_port, 1, 65535, err)
        username = env.get("EMMA_ALARM_SMTP_USERNAME", "").strip()
        password = env.get("EMMA_ALARM_SMTP_PASSWORD", "")
        if bool(username) != bool(password):
            raise err("EMMA_ALARM_SMTP_USERNAME and EMMA_ALARM_SMTP_PASSWORD are set together or not at all")
        return cls(
            webhook_private=private == "allow",
            webhook_timeout_s=env_float(env, "EMMA_ALARM_WEBHOOK_TIMEOUT_S", cls.webhook_timeout_s, 0.1, err),
            attempts=env_int(env, "EMMA_ALARM_DELIVERY_ATTEMPTS", cls.attempts, 1, 100, err),
            retry_base_s=env_float(env, "EMMA_ALARM_RETRY_BASE_S", cls.retry_base_s, 0.01, err),
            retry_max_s=env_float(env, "EMMA_ALARM_RETRY_MAX_S", cls.retry_max_s, 0.01, err),
            smtp_host=env.get("EMMA_ALARM_SMTP_HOST", "").strip(),
            smtp_port=port,
            smtp_from=env.get("EMMA_ALARM_SMTP_FROM", cls.smtp_from).strip() or cls.smtp_from,
            smtp_starttls=env_flag(env, "EMMA_ALARM_SMTP_STARTTLS", cls.smtp_starttls, err),
            smtp_username=username,
            smtp_password=password,
            command_target=env.get("EMMA_ALARM_COMMAND_TARGET", "").strip(),
        )

    def retry_delay_s(self, attempts: int) -> float:
        """The wait after the attempts-th failed attempt."""
        return float(min(self.retry_max_s, self.retry_base_s * 2 ** (attempts - 1)))


@dataclass(frozen=True)
class RecommendationConfig:
    """per_hour: EMMA_ALARM_RECOMMENDATIONS_PER_HOUR, the most recommendations one site accepts in an
    hour (a runaway recommendation service must not bury the operators)."""

    per_hour: int = 60

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RecommendationConfig:
        return cls(
            per_hour=env_int(env, "EMMA_ALARM_RECOMMENDATIONS_PER_HOUR", cls.per_hour, 1, None, AlarmConfigError)
        )

"""The `hermes-flare.yaml` models: the one file every user decision lives in.

Every field carries a description; `flared schema` and `docs/config.md` are
generated from these models. Loading (with positions, interpolation and
error reporting) lives in :mod:`flared.config.loader`.

Size: one model per YAML section, each field with its description, is the
file format in one place; `flared schema` and the docs walk it in order, and
splitting it would only scatter what a reader compares side by side.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from flared.config.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    check_name,
    check_schedule,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

# --------------------------------------------------------------------------- scalar types

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "15m", "1h", "7d"]}),
]

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
            ],
            "examples": ["64KiB", "1MiB", "2GiB"],
        }
    ),
]


class Model(BaseModel):
    """Base for every section: unknown keys are errors, fields are documented."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        """`${VAR:-}` yields ""; for an optional field that means "not set"."""
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                if data.get(name) == "" and not f.is_required() and f.default is None:
                    data = {**data, name: None}
        return data


def secret(description: str) -> Any:
    return Field(default=None, description=description, json_schema_extra={"secret": True})


# --------------------------------------------------------------------------- sections


class StoreConfig(Model):
    """Where snapshots live: a local directory or an S3-compatible bucket (R2)."""

    url: str = Field(
        default="file://./.flare-store",
        description="`file://PATH` (relative to the config file) or `s3://BUCKET/PREFIX`. The local "
        "default sits beside the state dir, not in it: deleting the state dir (`make clean`) keeps "
        "every snapshot.",
        examples=["file://./.flare-store", "s3://hermes-flare-data/snapshots"],
    )
    endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL; for R2 `https://<account_id>.r2.cloudflarestorage.com`.",
        examples=["https://0123456789abcdef.r2.cloudflarestorage.com"],
    )
    region: str = Field(default="auto", description="S3 region; R2 uses `auto`.")
    access_key_id: SecretStr | None = secret("S3/R2 access key id, e.g. `${R2_ACCESS_KEY_ID}`.")
    secret_access_key: SecretStr | None = secret("S3/R2 secret access key, e.g. `${R2_SECRET_ACCESS_KEY}`.")
    multipart_threshold: Size = Field(
        default=64 * 1024**2,
        description="Blobs larger than this move in parts (parallel upload, ranged downloads); "
        "smaller ones in one request, hashed while they stream.",
    )
    multipart_chunksize: Size = Field(default=16 * 1024**2, description="Size of each upload/download part.")
    max_concurrency: int = Field(default=8, ge=1, le=64, description="Parallel parts per transfer.")
    timeout: Duration = Field(default=30.0, description="Connect/read timeout for one store request.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not (v.startswith("file://") or v.startswith("s3://")):
            raise ValueError(f"unsupported store url {v!r}: use file://PATH or s3://BUCKET/PREFIX")
        if v.startswith("s3://") and not v[5:].split("/")[0]:
            raise ValueError("s3:// url needs a bucket name, e.g. s3://hermes-flare-data/snapshots")
        if v == "file://":
            raise ValueError("file:// url needs a path, e.g. file://./.flare-store")
        return v


class OnChangeConfig(Model):
    enabled: bool = Field(default=True, description="Snapshot when the bot's Hermes home changes.")
    debounce: Duration = Field(
        default=30.0, description="Quiet time after the last change before snapshotting."
    )


class KeepConfig(Model):
    last: int = Field(default=48, ge=1, description="Keep at least the newest N snapshots.")
    max_age: Duration | None = Field(
        default=14 * 86400.0,
        description="Delete snapshots older than this (beyond the newest `last`); null keeps all.",
    )


class CompressionConfig(Model):
    algorithm: Literal["zstd", "gzip", "xz", "lz4", "lzo"] = Field(
        default="zstd", description="mksquashfs compressor."
    )
    level: int | None = Field(
        default=None,
        ge=1,
        le=22,
        description="Compression level; null = flared's choice (zstd: 3, fast with a ratio near gzip -9; others: mksquashfs' default).",
    )


class EncryptionConfig(Model):
    key: SecretStr | None = secret(
        "Client-side encryption key (any string; a key is derived from it). When set, blobs are "
        "encrypted with AES-256-GCM before upload and credential files are included in snapshots."
    )


class StreamConfig(Model):
    """Litestream: each bot's SQLite databases streamed to the store within about a second."""

    enabled: bool = Field(
        default=True,
        description="Stream the bots' SQLite databases (`state.db`, `kanban.db`, `cron/executions.db`, "
        "any `*.db` Hermes creates) to the store with Litestream; snapshots then leave them out. "
        "Off by itself when `snapshots.encryption.key` is set (Litestream 0.5 has no client-side "
        "encryption); `true` with a key is refused.",
    )
    interval: Duration = Field(
        default=1.0,
        description="How often Litestream looks for new transactions and ships them: the most a "
        "lost machine costs. Shorter costs more store writes (100ms: ~6x the PUTs; see docs/snapshots.md).",
    )
    pattern: str = Field(
        default="*.db",
        description="Glob (matched in every directory of the Hermes home) of databases to stream.",
    )
    retention: Duration = Field(
        default=14 * 86400.0,
        description="How far back the stream can go (`flared restore --id` of an older snapshot gets "
        "its databases as of that snapshot only within this window).",
    )
    stall_after: Duration = Field(
        default=30.0,
        description="A database whose newest transaction has not reached the store for this long is "
        "reported as stalled by `flared status` and the admin page.",
    )

    fence_check: Duration = Field(
        default=10.0,
        description="How often a streaming flared reads `latest.json` to learn that another flared took "
        "the bot over (it then stops streaming it); a flared that takes a bot over starts its stream "
        "this long (plus a second) after its claim. One GET per bot each time.",
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 0.1:
            raise ValueError("must be at least 100ms (every sync is a store write)")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("a file-name glob such as `*.db` (it applies in every directory)")
        return v


class SnapshotsConfig(Model):
    """When and how each bot's Hermes home is snapshotted."""

    every: Duration | None = Field(default=900.0, description="Periodic snapshot interval; null disables.")
    on_change: OnChangeConfig = Field(
        default_factory=OnChangeConfig, description="Change-triggered snapshots."
    )
    on_shutdown: bool = Field(default=True, description="Take a final snapshot when flared stops.")
    shutdown_budget: Duration = Field(
        default=60.0,
        description="Time allowed for final snapshots at shutdown, from flared's SIGTERM; cut to "
        "supervisord's stopwaitsecs for flared less 5 s when that is shorter. A final snapshot "
        "still running then is abandoned: flared, `flared stop`, `flared up` and the container "
        "exit 1 naming the bot (docs/snapshots.md).",
    )
    keep: KeepConfig = Field(default_factory=KeepConfig, description="Retention policy.")
    exclude: list[str] = Field(
        default_factory=lambda: ["logs/**", "image_cache/**", "audio_cache/**"],
        description="Glob patterns (relative to the Hermes home) left out of snapshots.",
    )
    compression: CompressionConfig = Field(default_factory=CompressionConfig, description="Packing.")
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig, description="Optional encryption.")
    stream: StreamConfig = Field(
        default_factory=StreamConfig, description="Continuous replication of the SQLite databases."
    )

    @model_validator(mode="after")
    def _no_stream_when_encrypted(self) -> SnapshotsConfig:
        """Litestream 0.5 uploads plain pages: with a key, the databases go in the encrypted
        snapshots instead (an explicit `stream.enabled: true` is refused by the loader's checks)."""
        if self.encryption.key is None:
            return self
        self.stream.enabled = False
        return self


class LivenessConfig(Model):
    """Probing each ready gateway, so one that stopped answering is restarted.

    A stopped (SIGSTOP) or deadlocked gateway keeps its process: supervisord
    says RUNNING and Hermes' own files still say running, so only a probe
    notices.
    """

    enabled: bool = Field(
        default=True, description="Probe ready gateways and restart one that stopped answering."
    )
    every: Duration = Field(default=15.0, description="How often each ready gateway is probed.")
    timeout: Duration = Field(
        default=5.0, description="Deadline of one probe: `GET /health` on the bot's `api:` port."
    )
    failures: int = Field(
        default=3, ge=1, description="Failed probes in a row after which flared restarts the gateway."
    )
    heartbeat_stale: Duration = Field(
        default=120.0,
        description="Hermes rewrites `state/gateway.heartbeat` every 30 s; a heartbeat older than this "
        "fails the probe (the only probe of a bot without `api:`).",
    )

    @field_validator("every", "timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be more than 0s")
        return v

    @field_validator("heartbeat_stale")
    @classmethod
    def _beyond_hermes_interval(cls, v: float) -> float:
        if v <= 30:
            raise ValueError("must be more than 30s: Hermes rewrites its heartbeat every 30 s")
        return v


class RestoreConfig(Model):
    """What happens at boot before a bot's gateway starts."""

    on_unreachable: Literal["wait", "start_fresh"] = Field(
        default="wait",
        description="If the store cannot be reached at boot: `wait` (retry, never start empty) "
        "or `start_fresh` (start with empty state; no snapshot is taken until the store answers).",
    )
    retry_initial: Duration = Field(
        default=2.0, description="First retry delay while the store is unreachable."
    )
    retry_max: Duration = Field(default=60.0, description="Longest retry delay (exponential backoff).")


class SandboxProfile(Model):
    """A named kind of exec sandbox; bots pick one with `bots[].sandbox`."""

    provider: Literal["local", "cloudflare"] = Field(
        default="local", description="`local` (bubblewrap on this machine) or `cloudflare` (Exec containers)."
    )
    mode: Literal["shared", "per-session", "per-command"] = Field(
        default="per-session",
        description="`shared`: one sandbox for every session of the bot; `per-session`: one per Hermes "
        "session; `per-command`: a fresh sandbox for each command.",
    )
    idle_ttl: Duration = Field(default=600.0, description="Destroy a lease unused for this long.")
    max_lifetime: Duration = Field(default=7200.0, description="Destroy a lease this old, used or not.")
    max_leases: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Live leases of this profile, all bots together. At the limit the least recently "
        "used idle lease is destroyed (its files with it) before anyone waits.",
    )
    max_leases_per_bot: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Live leases one bot may hold in this profile, so one bot cannot take every lease "
        "from another. Default: `max_leases` split evenly among the enabled bots that use the profile "
        "(at least 1 each).",
    )
    acquire_timeout: Duration = Field(
        default=30.0,
        description="How long a command waits for a lease when every one it may take is running a "
        "command; it says so at once, then fails with the profile and its limits.",
    )
    command_timeout: Duration = Field(default=120.0, description="Default wall-clock limit of one command.")
    output_limit: Size = Field(
        default=1024**2, description="Stdout/stderr kept per command; the rest is cut."
    )
    memory: Size = Field(default=1024**3, description="Memory limit of a sandbox.")
    cpu_time: Duration = Field(default=300.0, description="CPU time limit of one command.")
    pids: int = Field(default=256, ge=8, description="Process limit of a sandbox.")
    network: bool = Field(default=False, description="Allow network access from the sandbox.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables inside the sandbox (plain values; `${VAR}` needs `allow_secrets`).",
    )
    allow_secrets: bool = Field(
        default=False, description="Allow `${VAR}` interpolation in `env` (puts those values in the sandbox)."
    )
    workdir: str = Field(default="/workspace", description="Working directory commands see.")
    endpoint: str = Field(
        default="http://sandboxes.flare.internal",
        description="cloudflare provider: the Worker URL serving the sandbox contract.",
    )
    token: SecretStr | None = secret(
        "cloudflare provider: bearer token for the Worker's sandbox endpoints (default $FLARE_CONTROL_TOKEN)."
    )

    @field_validator("workdir")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("workdir must be an absolute path such as /workspace")
        return v


class AiGatewayConfig(Model):
    """Route the model provider through Cloudflare AI Gateway."""

    account_id: str = Field(description="Cloudflare account id.")
    gateway_id: str = Field(description="AI Gateway id (its name).")
    token: SecretStr | None = secret("AI Gateway token, sent as `cf-aig-authorization` when set.")


ProviderName = Literal["anthropic", "openai", "openrouter", "custom"]


class ModelConfig(Model):
    """The LLM a bot talks to."""

    provider: ProviderName = Field(default="custom", description="anthropic, openai, openrouter or custom.")
    model: str = Field(default="", description="Model name, e.g. `claude-sonnet-4-5`.")
    api_key: SecretStr | None = secret("Provider API key, e.g. `${ANTHROPIC_API_KEY}`.")
    base_url: str | None = Field(
        default=None,
        description="Provider base URL (required for `custom`, e.g. `http://127.0.0.1:11434/v1`).",
    )
    ai_gateway: AiGatewayConfig | None = Field(default=None, description="Optional Cloudflare AI Gateway.")


_XOXB = re.compile(r"^xoxb-[A-Za-z0-9-]+$")
_XAPP = re.compile(r"^xapp-[A-Za-z0-9-]+$")
_MEMBER = re.compile(r"^[UW][A-Z0-9]{2,}$")
_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,}$")


def _check_token(v: SecretStr, pattern: re.Pattern[str], prefix: str, what: str) -> SecretStr:
    if not pattern.match(v.get_secret_value()):
        raise ValueError(f"{what} must look like {prefix}… (check the variable it comes from)")
    return v


def _check_members(v: list[str]) -> list[str]:
    for uid in v:
        if not _MEMBER.match(uid):
            raise ValueError(
                f"{uid!r} is not a Slack member id (like U01ABC2DEF3; find it in the profile menu)"
            )
    return v


class SlackAppConfig(Model):
    """A Slack app in Socket Mode."""

    bot_token: SecretStr = Field(description="Bot token `xoxb-…`.", json_schema_extra={"secret": True})
    app_token: SecretStr = Field(
        description="App-level token `xapp-…` with connections:write.", json_schema_extra={"secret": True}
    )
    api_url: str = Field(
        default="https://slack.com/api/",
        description="Slack Web API base URL (GovSlack, an enterprise proxy or a test server).",
    )

    @field_validator("bot_token")
    @classmethod
    def _bot(cls, v: SecretStr) -> SecretStr:
        return _check_token(v, _XOXB, "xoxb-", "bot_token")

    @field_validator("app_token")
    @classmethod
    def _app(cls, v: SecretStr) -> SecretStr:
        return _check_token(v, _XAPP, "xapp-", "app_token")

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            raise ValueError("api_url must be an http(s) URL")
        return v if v.endswith("/") else v + "/"


class SlackConfig(SlackAppConfig):
    """A bot's Slack connection."""

    allowed_users: list[str] = Field(
        default_factory=list, description="Slack member ids allowed to talk to the bot."
    )
    allowed_channels: list[str] = Field(
        default_factory=list, description="Channel ids the bot answers in (empty: any it is invited to)."
    )
    home_channel: str | None = Field(default=None, description="Channel for cron deliveries and notices.")
    reply_in_thread: bool = Field(default=True, description="Answer channel messages in a thread.")
    require_mention: bool = Field(default=True, description="In channels, answer only when mentioned.")

    @field_validator("allowed_users")
    @classmethod
    def _users(cls, v: list[str]) -> list[str]:
        return _check_members(v)

    @field_validator("allowed_channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        for cid in v:
            if not _CHANNEL.match(cid):
                raise ValueError(f"{cid!r} is not a Slack channel id (like C0123ABCD)")
        return v


class ApiConfig(Model):
    """Hermes' OpenAI-compatible api_server for this bot: chat locally with no Slack."""

    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=8642, ge=1, le=65535, description="TCP port.")
    key: SecretStr | None = secret(
        "Bearer key (16+ chars). When unset flared generates one and keeps it in the state dir."
    )

    @property
    def dial_host(self) -> str:
        """Where a local client reaches it: loopback when it binds every address."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


DEFAULT_TOOLSETS = ["terminal", "file", "memory", "skills", "cronjob", "web", "todo", "session_search"]


class BotConfig(Model):
    """One Hermes agent: its own Hermes home, gateway, snapshots and sandboxes."""

    name: str = Field(description="Bot name: lowercase letters, digits, hyphens (1-40).", examples=["hermes"])
    enabled: bool = Field(default=True, description="Run this bot's gateway.")
    group: str = Field(
        default="default", description="Agent container group on Cloudflare (each group is one container)."
    )
    sandbox: str = Field(default="default", description="Name of the sandbox profile its commands run in.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The LLM.")
    slack: SlackConfig | None = Field(default=None, description="Slack connection (Socket Mode).")
    api: ApiConfig | None = Field(default=None, description="Local OpenAI-compatible chat API.")
    toolsets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TOOLSETS), description="Hermes toolsets the bot may use."
    )
    env: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra environment for the gateway (written to its .env, never snapshotted).",
        json_schema_extra={"secret": True},
    )
    hermes: dict[str, Any] = Field(
        default_factory=dict,
        description="Passthrough: any other Hermes config.yaml keys (deep-merged over what flared renders).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "bot name")

    @field_validator("group")
    @classmethod
    def _group(cls, v: str) -> str:
        return check_name(v, "group name")


class CronJob(Model):
    """A scheduled job: an agent prompt (`bot` + `prompt`) or a flared action (`action`)."""

    name: str = Field(description="Job name (unique).")
    schedule: str = Field(description="Cron expression (`0 9 * * 1-5`) or `every 2h`.")
    enabled: bool = Field(default=True, description="Run this job.")
    timezone: str = Field(default="UTC", description="IANA timezone for the cron expression.")
    bot: str | None = Field(default=None, description="The bot (agent jobs; snapshot/restart/exec target).")
    prompt: str | None = Field(default=None, description="Agent job: the prompt the bot runs.")
    deliver: str | None = Field(
        default=None, description="Agent job: where the answer goes, e.g. `slack:C0123`."
    )
    action: Literal["snapshot", "restart", "prune", "exec"] | None = Field(
        default=None, description="System job run by flared."
    )
    command: list[str] | None = Field(default=None, description="For `action: exec`: the command (argv).")
    catch_up: bool = Field(default=False, description="Run once at start if a run was missed while down.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "cron job name")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        return check_schedule(v)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (use an IANA name such as Europe/Berlin)") from None
        return v

    @model_validator(mode="after")
    def _kind(self) -> CronJob:
        if (self.prompt is None) == (self.action is None):
            raise ValueError("a cron job needs exactly one of `prompt` (with `bot`) or `action`")
        if self.prompt is not None and not self.bot:
            raise ValueError("an agent job (`prompt`) needs `bot`")
        if self.action in ("restart", "exec") and not self.bot:
            raise ValueError(f"action {self.action!r} needs `bot`")
        if self.action == "exec" and not self.command:
            raise ValueError("action 'exec' needs `command`")
        return self


class OperatorConfig(Model):
    """A second Slack app that manages the agent from outside it."""

    slack: SlackAppConfig = Field(description="The operator's Slack app.")
    allowed_users: list[str] = Field(
        description="Member ids allowed to operate.", json_schema_extra={"minItems": 1}
    )
    confirm: list[Literal["restore", "restart"]] = Field(
        default_factory=lambda: ["restore", "restart"],  # type: ignore[arg-type]
        description="Commands that ask for a confirmation button first.",
    )

    @field_validator("allowed_users")
    @classmethod
    def _users(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(
                "list at least one Slack member id who may operate (like U01ABC2DEF3; "
                "find it in the profile menu): without one nobody could use the operator"
            )
        return _check_members(v)


class AccessConfig(Model):
    """Cloudflare Access in front of `/api/*`."""

    team_domain: str = Field(description="e.g. `example.cloudflareaccess.com`.")
    aud: str = Field(description="The Access application's AUD tag.")
    allowed_emails: list[str] = Field(default_factory=list, description="Optional allow-list of emails.")
    allowed_service_tokens: list[str] = Field(
        default_factory=list,
        description="Optional allow-list of Access service tokens by Client ID (their JWTs carry no "
        "email, only this as `common_name`), e.g. for CI or scripts.",
    )


class ContainerSpec(Model):
    instance_type: str = Field(description="Cloudflare Containers instance type (lite, basic, standard-1…).")
    max_instances: int = Field(ge=1, description="Upper bound on running instances.")


# From this date Durable Objects have `ctx.exports`, which @cloudflare/containers
# needs to intercept the Agent container's outbound requests.
MIN_COMPATIBILITY_DATE = "2025-11-17"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CloudflareConfig(Model):
    """What differs on Cloudflare; `flared render wrangler` turns it into wrangler.toml."""

    worker: str = Field(default="hermes-flare", description="Worker name.")
    account_id: str | None = Field(
        default=None,
        description="Cloudflare account id (32 hex digits, `wrangler whoami` shows it). Required to "
        "render wrangler.toml: flared reaches R2 at `https://<account_id>.r2.cloudflarestorage.com`.",
    )
    bucket: str = Field(default="hermes-flare-data", description="R2 bucket holding snapshots.")
    keepalive: str = Field(default="*/5 * * * *", description="Cron Trigger that keeps the Agent warm.")
    compatibility_date: str = Field(
        default=MIN_COMPATIBILITY_DATE,
        description=f"Workers compatibility date; {MIN_COMPATIBILITY_DATE} or later (Durable Objects "
        "need `ctx.exports` to intercept the Agent container's outbound requests).",
    )
    agent: ContainerSpec = Field(
        default_factory=lambda: ContainerSpec(instance_type="standard-1", max_instances=4),
        description="Agent container (one instance per bot group).",
    )
    exec: ContainerSpec = Field(
        default_factory=lambda: ContainerSpec(instance_type="basic", max_instances=20),
        description="Exec sandbox containers.",
    )
    egress_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets (names of `${VAR}`s this YAML uses) injected at egress: the Agent container "
        "gets a placeholder and the Worker puts the real value into requests to the LLM providers.",
    )
    access: AccessConfig | None = Field(default=None, description="Cloudflare Access for `/api/*`.")

    @field_validator("keepalive")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_schedule(v)

    @field_validator("account_id")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        if v and not re.fullmatch(r"[0-9a-f]{32}", v.strip()):
            raise ValueError("must be 32 hexadecimal digits (`wrangler whoami` shows your account id)")
        return v.strip() if v else v

    @field_validator("compatibility_date")
    @classmethod
    def _date(cls, v: str) -> str:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise ValueError("must be a date like 2025-11-17")
        if v < MIN_COMPATIBILITY_DATE:
            raise ValueError(
                f"must be {MIN_COMPATIBILITY_DATE} or later: before it a Durable Object has no "
                "ctx.exports and the Agent container's outbound interception fails "
                "(`ctx.exports is undefined`)"
            )
        return v

    @field_validator("egress_secrets")
    @classmethod
    def _egress(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a variable name")
            if name.startswith("FLARE_"):
                raise ValueError(f"{name}: FLARE_* variables are flared's own, not secrets to inject")
        return v


class ControlConfig(Model):
    """flared's control API: a unix socket, and optionally TCP for the Worker."""

    socket: str | None = Field(
        default=None, description="Unix socket path (default `<state_dir>/flared.sock`)."
    )
    host: str = Field(default="127.0.0.1", description="TCP bind address when `port` is set.")
    port: int | None = Field(default=None, ge=1, le=65535, description="TCP port (7979 in the image).")
    token: SecretStr | None = secret("Bearer token required on TCP (default `$FLARE_CONTROL_TOKEN`).")


class AdminConfig(Model):
    """The admin page on loopback, served by `flared up` (on Cloudflare the Worker serves it at `/admin`)."""

    enabled: bool = Field(default=True, description="Serve the admin page locally.")
    host: str = Field(
        default="127.0.0.1", description="Loopback address to listen on (`127.0.0.1`, `::1` or `localhost`)."
    )
    port: int = Field(
        default=8643,
        ge=0,
        le=65535,
        description="TCP port (0: any free port; `flared admin` prints the URL).",
    )

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        try:
            ok = v == "localhost" or ipaddress.ip_address(v).is_loopback
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{v!r} is not a loopback address: the local admin page listens on 127.0.0.1 or ::1 only "
                "(to reach it from elsewhere, deploy to Cloudflare, where /admin sits behind Access)"
            )
        return v


class HermesFlareConfig(Model):
    """hermes-flare.yaml: bots, sandboxes, snapshot policy, cron."""

    version: Literal[1] = Field(default=1, description="File format version.")
    state_dir: str = Field(
        default="./.flare",
        description="Where bots' Hermes homes, logs and locks live (relative to this file).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="flared log level."
    )
    control: ControlConfig = Field(default_factory=ControlConfig, description="Control API.")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="The local admin page.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Snapshot store.")
    snapshots: SnapshotsConfig = Field(default_factory=SnapshotsConfig, description="Snapshot policy.")
    restore: RestoreConfig = Field(default_factory=RestoreConfig, description="Restore policy.")
    liveness: LivenessConfig = Field(
        default_factory=LivenessConfig, description="Gateway liveness probe: restart a gateway that hangs."
    )
    sandboxes: dict[str, SandboxProfile] = Field(
        default_factory=lambda: {"default": SandboxProfile()}, description="Named sandbox profiles."
    )
    bots: list[BotConfig] = Field(
        default_factory=list,
        description="The agents. The file must have this section: write `bots: []` to run none "
        "(a file without it, or an empty file, is refused, so a truncated file never stops every bot).",
    )
    cron: list[CronJob] = Field(default_factory=list, description="Scheduled jobs.")
    operator: OperatorConfig | None = Field(default=None, description="Optional operator Slack bot.")
    cloudflare: CloudflareConfig | None = Field(default=None, description="Cloudflare deployment settings.")

    def bot(self, name: str) -> BotConfig:
        for b in self.bots:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def bot_names(self) -> list[str]:
        return [b.name for b in self.bots]

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone as django_timezone

from assure import secrets
from assure.models import WorkspaceOwned
from assure.secrets import EncryptedJSONField, EncryptedTextField
from scenarios import validators
from scenarios.cron import MAX_CRON_LENGTH, MIN_INTERVAL_MINUTES, NeverDue, next_after, validate_cron, validate_timezone


class Channel(models.TextChoices):
    VOICE = "voice", "Voice"
    CHAT = "chat", "Chat"


class Agent(WorkspaceOwned):
    """The simulated caller's configuration."""

    class VoiceProvider(models.TextChoices):
        ELEVENLABS = "ElevenLabs", "ElevenLabs"
        GOOGLE = "Google", "Google"
        AMAZON = "Amazon", "Amazon"

    name = models.CharField(max_length=100)
    instructions = models.TextField(blank=True, help_text="Persona instructions the simulated caller follows.")
    language = models.CharField(
        max_length=16,
        default="en-US",
        validators=[validators.validate_language],
        help_text="BCP 47 language tag, e.g. en-US.",
    )
    voice_provider = models.CharField(max_length=20, choices=VoiceProvider.choices, default=VoiceProvider.ELEVENLABS)
    voice = models.CharField(max_length=100, blank=True, help_text="The provider's voice id; blank for its default.")
    llm_base_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[validators.validate_http_url],
        help_text="OpenAI-compatible endpoint for the LLM caller; blank uses the server's LLM_BASE_URL.",
    )
    llm_model = models.CharField(max_length=100, blank=True)
    llm_api_key = EncryptedTextField(max_length=500, blank=True)
    max_duration_seconds = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(10), MaxValueValidator(3600)],
        help_text="A conversation still going after this long ends as duration_cap_no_progress.",
    )
    end_conditions = models.TextField(blank=True, help_text="When the caller should end the conversation.")
    outbound_numbers = models.JSONField(
        default=list,
        blank=True,
        validators=[validators.validate_e164_list],
        help_text="E.164 numbers this agent may dial from.",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "name"], name="agent_unique_name_per_workspace"),
            models.CheckConstraint(
                condition=models.Q(max_duration_seconds__gte=10, max_duration_seconds__lte=3600),
                name="agent_max_duration_in_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class CustomFunction(WorkspaceOwned):
    """A tool the simulated caller can call; its webhook must be synced before runs use it."""

    class SyncStatus(models.TextChoices):
        PENDING = "pending", "Pending"
        SYNCED = "synced", "Synced"
        ERROR = "error", "Error"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="functions")
    name = models.CharField(max_length=64, validators=[validators.validate_function_name])
    description = models.TextField(blank=True)
    parameters = models.JSONField(
        default=validators.empty_object_schema, validators=[validators.validate_parameters_schema]
    )
    url = models.CharField(max_length=500, validators=[validators.validate_http_url], help_text="The function's webhook.")
    secret = EncryptedTextField(max_length=200, blank=True, help_text="Signs requests to the webhook.")
    sync_status = models.CharField(max_length=10, choices=SyncStatus.choices, default=SyncStatus.PENDING)
    sync_error = models.TextField(blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="function_unique_name_per_agent"),
        ]
        indexes = [models.Index(fields=["agent", "sync_status"], name="function_agent_sync")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.agent_id:
            errors = self.same_workspace_errors(agent=self.agent)
            if errors:
                raise ValidationError(errors)


class Target(WorkspaceOwned):
    """The system under test."""

    class Kind(models.TextChoices):
        OPENAI_CHAT = "openai_chat", "OpenAI-compatible chat"
        HTTP_JSON = "http_json", "HTTP JSON"
        WEBSOCKET = "websocket", "WebSocket"
        PHONE = "phone", "Phone number"
        DEMO = "demo", "Built-in demo"
        REHEARSAL = "rehearsal", "Rehearsal (a chat target, spoken)"

    CHAT_KINDS = (Kind.OPENAI_CHAT, Kind.HTTP_JSON, Kind.WEBSOCKET, Kind.DEMO)
    VOICE_KINDS = (Kind.PHONE, Kind.DEMO, Kind.REHEARSAL)
    # Voice targets that live inside the loopback telephony, reached on fictional numbers.
    LOOPBACK_KINDS = (Kind.DEMO, Kind.REHEARSAL)

    name = models.CharField(max_length=100)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    url = models.CharField(max_length=500, blank=True)
    phone_number = models.CharField(max_length=16, blank=True, validators=[validators.validate_e164])
    headers = EncryptedJSONField(
        default=dict, blank=True, validators=[validators.validate_headers], help_text="Secret request headers."
    )
    request_template = models.JSONField(default=dict, blank=True, validators=[validators.validate_json_object])
    response_path = models.CharField(max_length=200, blank=True, validators=[validators.validate_jsonpath])
    model = models.CharField(max_length=100, blank=True, help_text="Model name sent to an openai_chat target.")
    rehearse_with = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.RESTRICT, related_name="rehearsals",
        help_text="Rehearsal targets: the chat target whose replies are spoken on a loopback call.",
    )
    dial_in_delay_seconds = models.PositiveIntegerField(
        default=2, validators=[MaxValueValidator(3600)],
        help_text="Loopback targets in inbound scenarios dial the armed number after this many seconds.",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "name"], name="target_unique_name_per_workspace"),
            models.CheckConstraint(
                condition=(
                    models.Q(channel="chat", kind__in=["openai_chat", "http_json", "websocket", "demo"])
                    | models.Q(channel="voice", kind__in=["phone", "demo", "rehearsal"])
                ),
                name="target_kind_matches_channel",
            ),
            models.CheckConstraint(
                condition=models.Q(kind="rehearsal", rehearse_with__isnull=False) | ~models.Q(kind="rehearsal"),
                name="target_rehearsal_has_chat_target",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def secrets_fingerprint(self) -> str:
        """Where the secret headers go and what they are, as one HMAC (``assure.secrets.fingerprint``):
        a run queued with one fingerprint must not send other headers, or its headers to another host."""
        return secrets.fingerprint({"origin": url_origin(self.url), "headers": self.headers})

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.channel == Channel.VOICE and self.kind in self.LOOPBACK_KINDS:
            # Loopback targets answer on their own fictional number; users never type one.
            self.phone_number = loopback_number(self)
        allowed = self.CHAT_KINDS if self.channel == Channel.CHAT else self.VOICE_KINDS
        if self.channel and self.kind and self.kind not in allowed:
            errors["kind"] = f"A {self.channel} target's kind is one of: {', '.join(allowed)}."
        if self.kind == self.Kind.PHONE and not self.phone_number:
            errors["phone_number"] = "A phone target needs the number to call, in E.164 (+14155550123)."
        if self.kind in (self.Kind.OPENAI_CHAT, self.Kind.HTTP_JSON):
            if not self.url:
                errors["url"] = "This kind of target needs its http(s) URL."
            else:
                try:
                    validators.validate_http_url(self.url)
                except ValidationError as exc:
                    errors["url"] = exc.messages[0]
        if self.kind == self.Kind.WEBSOCKET:
            if not self.url:
                errors["url"] = "A websocket target needs its ws(s) URL."
            else:
                try:
                    validators.validate_ws_url(self.url)
                except ValidationError as exc:
                    errors["url"] = exc.messages[0]
        if self.kind == self.Kind.HTTP_JSON:
            if not self.request_template:
                errors["request_template"] = 'An http_json target needs a request template, e.g. {"message": "{{message}}"}.'
            elif "{{message}}" not in _strings(self.request_template):
                errors["request_template"] = "The request template must place {{message}} in one of its string values."
            if not self.response_path:
                errors["response_path"] = "An http_json target needs the JSONPath of the reply, e.g. $.reply."
        if self.kind == self.Kind.OPENAI_CHAT and not self.model:
            errors["model"] = "An openai_chat target needs the model name to send."
        if self.kind == self.Kind.REHEARSAL:
            if not self.rehearse_with_id:
                errors["rehearse_with"] = "A rehearsal target needs the chat target whose replies it speaks."
            else:
                chat = self.rehearse_with
                if chat.workspace_id != self.workspace_id:
                    errors["rehearse_with"] = "Must belong to the same workspace."
                elif chat.channel != Channel.CHAT:
                    errors["rehearse_with"] = "Pick a chat target: its replies are what the rehearsal speaks."
        elif self.rehearse_with_id:
            errors["rehearse_with"] = "Only rehearsal targets speak a chat target's replies."
        if errors:
            raise ValidationError(errors)


DEMO_VOICE_NUMBER = "+15550100"

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def url_origin(url: str) -> str:
    """``scheme://host:port`` of a URL, lower-cased, default port filled in: who receives what is sent
    to it. Blank for a blank or unparsable URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return ""
    if not parts.hostname:
        return ""
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}:{port}"


def loopback_number(target: "Target") -> str:
    """The fictional number (+1 555 01…) a loopback voice target answers on: the demo receptionist
    has one shared number, each rehearsal target its own, derived from its id."""
    if target.kind == Target.Kind.DEMO:
        return DEMO_VOICE_NUMBER
    return f"+155501{target.id.int % 10**8:08d}"


def _strings(value) -> str:
    """All string values of a JSON document, joined, to look for placeholders."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_strings(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_strings(v) for v in value)
    return ""


class Scenario(WorkspaceOwned):
    class Direction(models.TextChoices):
        OUTBOUND = "outbound", "Outbound"
        INBOUND = "inbound", "Inbound"

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, help_text="What is being tested; the persona is composed from it.")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.OUTBOUND)
    inbound_window_seconds = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(10), MaxValueValidator(86400)],
        help_text="Inbound runs wait this long for the target's call.",
    )
    agent = models.ForeignKey(Agent, on_delete=models.RESTRICT, related_name="scenarios")
    target = models.ForeignKey(Target, on_delete=models.RESTRICT, related_name="scenarios")
    criteria = models.JSONField(default=list, blank=True, validators=[validators.validate_criteria])
    max_parallel_runs = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="Blank: only the workspace's bound applies.",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_parallel_runs__isnull=True) | models.Q(max_parallel_runs__gte=1),
                name="scenario_max_parallel_runs_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(channel="voice") | models.Q(direction="outbound"),
                name="scenario_chat_is_outbound",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = self.same_workspace_errors(
            agent=self.agent if self.agent_id else None, target=self.target if self.target_id else None
        )
        if self.target_id and self.channel and self.target.channel != self.channel and "target" not in errors:
            errors["target"] = f"This is a {self.channel} scenario; pick a {self.channel} target."
        if self.channel == Channel.CHAT and self.direction == self.Direction.INBOUND:
            errors["direction"] = "Chat scenarios are outbound: the caller opens the session."
        if errors:
            raise ValidationError(errors)


class Path(WorkspaceOwned):
    """One narrative through a scenario."""

    scenario = models.ForeignKey(Scenario, on_delete=models.CASCADE, related_name="paths")
    name = models.CharField(max_length=200)
    narrative = models.TextField(blank=True, help_text="Who calls, what they want, how they behave.")
    script = models.JSONField(
        default=list,
        blank=True,
        validators=[validators.validate_script],
        help_text="Optional steps for a deterministic caller.",
    )
    criteria = models.JSONField(default=list, blank=True, validators=[validators.validate_criteria])

    class Meta:
        ordering = ["scenario__name", "created_at", "name"]
        constraints = [
            models.UniqueConstraint(fields=["scenario", "name"], name="path_unique_name_per_scenario"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = self.same_workspace_errors(scenario=self.scenario if self.scenario_id else None)
        if not errors and self.scenario_id and not self.script and not self.narrative.strip():
            errors["narrative"] = "A path needs a narrative for the LLM caller, or a script of steps."
        if errors:
            raise ValidationError(errors)


class Schedule(WorkspaceOwned):
    """When a scenario runs by itself: a cron expression in a time zone; each due time queues one
    batch (every path, ``repeat`` times). ``next_run_at`` is the next due time (null while disabled);
    the beat task claims a due time by moving it on (``runs/schedules.py``), and records each one it
    fired as a ``runs.ScheduleFiring``: the batches are the runs app's, which this app knows nothing of."""

    # Each firing is a whole batch: a scenario with more schedules than this is a mistake, not a plan.
    MAX_PER_SCENARIO = 20

    scenario = models.ForeignKey(Scenario, on_delete=models.CASCADE, related_name="schedules")
    cron = models.CharField(
        max_length=MAX_CRON_LENGTH, validators=[validate_cron],
        help_text=f"Five fields: minute hour day-of-month month day-of-week, e.g. 0 6 * * 1-5. At most every "
                  f"{MIN_INTERVAL_MINUTES} minutes.")
    timezone = models.CharField(
        max_length=64, default="UTC", validators=[validate_timezone],
        help_text="IANA time zone the cron expression is read in, e.g. Europe/Paris.")
    enabled = models.BooleanField(default=True)
    repeat = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Runs of each path per firing (1–100).")
    slack_webhook_url = EncryptedTextField(
        max_length=500, blank=True, validators=[validators.validate_http_url],
        help_text="Optional Slack-compatible incoming-webhook URL told of each scheduled batch's result.")
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_reason = models.TextField(
        blank=True, editable=False,
        help_text="Why the schedule switched itself off (its cron never comes round again); cleared when enabled.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scenario__name", "created_at"]
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="schedule_due")]
        constraints = [
            models.CheckConstraint(condition=models.Q(repeat__gte=1, repeat__lte=100), name="schedule_repeat_in_range"),
        ]

    def __str__(self) -> str:
        return f"{self.cron} ({self.timezone})"

    def clean(self) -> None:
        errors = self.same_workspace_errors(scenario=self.scenario if self.scenario_id else None)
        if self.scenario_id and "scenario" not in errors:
            others = Schedule.objects.filter(scenario_id=self.scenario_id).exclude(pk=self.pk).count()
            if others >= self.MAX_PER_SCENARIO:
                errors["scenario"] = (f"This scenario has {others} schedules, the most it may have: "
                                            "delete or edit one of them instead.")
        if "cron" not in errors and "timezone" not in errors:
            try:
                validate_cron(self.cron)
                validate_timezone(self.timezone)
            except ValidationError:
                pass  # the fields' own validators say what is wrong
            else:
                try:
                    next_after(self.cron, self.timezone, django_timezone.now())
                except NeverDue as exc:
                    errors["cron"] = str(exc)
        if errors:
            raise ValidationError(errors)

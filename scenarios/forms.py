"""Authoring forms for agents, custom functions, targets, scenarios and paths.

Validation lives in the models (field validators from ``scenarios.validators`` and ``clean()``);
a ModelForm runs both, so every message the API gives appears here too, next to its field. The
forms add only what a browser form needs: the workspace and parent object come from the request,
never from posted data; related choices are scoped to the workspace; JSON is edited as text.
"""

from __future__ import annotations

import json

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.utils.html import format_html

from assure import json_input
from assure.admin_scoping import SecretFieldsForm
from assure.tenancy import scoped
from scenarios import services, validators
from scenarios.models import Agent, Channel, CustomFunction, Path, Scenario, Schedule, Target

# The step keys validators.validate_script accepts (it keeps no list of them), in the editor's order.
SCRIPT_STEP_KINDS = ("say", "press", "pause_ms", "expect", "end_call")


class JSONTextField(forms.JSONField):
    """JSON in a textarea, pretty-printed; an empty textarea means the empty list or object.

    The model fields are NOT NULL with a default, so "nothing typed" must become ``[]``/``{}``
    rather than ``None``.

    ``validator`` is the model field's own validator, run here as well: some of its messages have
    the code "invalid" ("Criteria must be a list."), and Django swaps any "invalid" message for the
    field's generic one ("Value must be valid JSON.") at the model level, and again at the form
    level. Run on this field, which has no "invalid" message, the validator's words come through.
    """

    default_error_messages = {"invalid_json": "Not valid JSON: %(reason)s."}

    def __init__(self, *, empty, validator, **kwargs):
        self.empty = empty
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "mono"}))
        super().__init__(validators=[validator], **kwargs)
        self.error_messages.pop("invalid", None)

    def to_python(self, value):
        if value in self.empty_values:
            return type(self.empty)()
        if isinstance(value, (list, dict, int, float)):
            return value
        try:
            return json_input.loads(value)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                self.error_messages["invalid_json"],
                code="invalid_json",
                params={"reason": f"{exc.msg} (line {exc.lineno}, column {exc.colno})"},
            ) from None
        except json_input.JSONInputError as exc:
            raise ValidationError(self.error_messages["invalid_json"], code="invalid_json", params={"reason": str(exc)}) from None

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        if value in (None, [], {}):
            return ""
        return json.dumps(value, ensure_ascii=False, indent=2)


class LinesListField(forms.CharField):
    """A list of strings edited one per line (outbound numbers)."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"})

    def to_python(self, value):
        return [line.strip() for line in (value or "").splitlines() if line.strip()]

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list) else value


class WorkspaceModelForm(forms.ModelForm):
    """A ModelForm for an object of ``workspace``.

    ``parent_fields`` name foreign keys the view sets from the URL (a function's agent, a path's
    scenario); like ``workspace`` they are not form fields.
    """

    parent_fields: tuple[str, ...] = ()
    # The field a uniqueness clash is shown on, and the words for it.
    clash_field = "name"
    duplicate_name_message = "That name is already used in this workspace."

    def __init__(self, *args, workspace, **kwargs):
        if workspace is None:
            raise ValueError(f"{type(self).__name__} needs the workspace the object belongs to.")
        super().__init__(*args, **kwargs)
        self.workspace = workspace
        if self.instance.workspace_id is None:
            self.instance.workspace = workspace
        for field in self.fields.values():
            if isinstance(field, forms.ModelChoiceField) and hasattr(field.queryset.model, "workspace_path"):
                # Another workspace's agents and targets are not even offered; the model's clean()
                # still refuses them if someone posts one's id.
                field.queryset = scoped(field.queryset, workspace)

    def _get_validation_exclusions(self):
        # Django leaves fields that are not on the form out of model validation, and with them
        # every constraint that mentions them: UniqueConstraint(workspace, name) would be skipped
        # and a duplicate name would end in an IntegrityError instead of a field error. The
        # workspace and parent are set before validation, so they can take part.
        exclude = super()._get_validation_exclusions()
        return exclude - {"workspace", *self.parent_fields}

    def _post_clean(self):
        super()._post_clean()
        # A (workspace, name) clash comes back as a non-field error worded for developers
        # ("Agent with this Workspace and Name already exists."); show it on the name instead.
        errors = self._errors.get(NON_FIELD_ERRORS)
        if errors and self.clash_field in self.fields:
            clash_codes = ("unique", "unique_together")
            if any(error.code in clash_codes for error in errors.as_data()):
                errors.data = [error for error in errors.as_data() if error.code not in clash_codes]
                if not errors:
                    del self._errors[NON_FIELD_ERRORS]
                self.add_error(self.clash_field, self.duplicate_name_message)


def show_when(form: forms.Form, field_name: str, condition: str) -> None:
    """Mark a field as relevant only when other fields have some values, e.g. ``kind=phone``.

    ``static/js/editors.js`` hides the field otherwise; several conditions join with ``;``.
    Purely presentational: the server validates every field whatever the browser shows.
    """
    if field_name in form.fields:
        form.fields[field_name].widget.attrs["data-show-when"] = condition


class AgentForm(SecretFieldsForm, WorkspaceModelForm):
    secret_fields = ("llm_api_key",)
    duplicate_name_message = "An agent with this name already exists in this workspace."

    outbound_numbers = LinesListField(
        required=False,
        label="Outbound numbers",
        # By path: the page belongs to telephony/, which scenarios does not import.
        help_text=format_html(
            "E.164 numbers this agent may dial from, one per line, e.g. +14155550123. Register them first on the "
            '<a href="{}">Phone numbers</a> page; blank dials from any outbound number of the workspace.',
            "/phone-numbers/"),
    )

    class Meta:
        model = Agent
        fields = [
            "name", "instructions", "language", "voice_provider", "voice", "max_duration_seconds",
            "end_conditions", "outbound_numbers", "llm_base_url", "llm_model", "llm_api_key",
        ]
        labels = {
            "llm_base_url": "LLM base URL",
            "llm_model": "LLM model",
            "llm_api_key": "LLM API key",
            "max_duration_seconds": "Max duration (seconds)",
        }
        widgets = {
            "instructions": forms.Textarea(attrs={"rows": 5}),
            "end_conditions": forms.Textarea(attrs={"rows": 3}),
        }


class FunctionForm(SecretFieldsForm, WorkspaceModelForm):
    secret_fields = ("secret",)
    parent_fields = ("agent",)
    duplicate_name_message = "This agent already has a function with this name."

    parameters = JSONTextField(
        empty={},
        validator=validators.validate_parameters_schema,
        help_text='A JSON Schema with "type": "object", e.g. '
        '{"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}.',
    )

    class Meta:
        model = CustomFunction
        fields = ["name", "description", "parameters", "url", "secret"]
        labels = {"url": "Webhook URL"}
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}


class TargetHeadersForm(forms.ModelForm):
    """A target's headers carry credentials: edited as a JSON textarea that never shows the stored
    ones (blank keeps them, ``{}`` removes them). Saved through ``services.target_save``, which will
    not carry the stored headers to a URL on another host. The page form and the admin share it."""

    # A plain text field rather than a JSONField, which would print the stored value.
    headers = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono", "autocomplete": "off"}),
        help_text='A JSON object of request headers, e.g. {"Authorization": "Bearer …"}.',
    )
    # Whether the headers were typed in, rather than kept from the stored target.
    headers_given = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "headers" not in self.fields:  # view-only admin forms have no inputs
            return
        self.initial["headers"] = ""
        if self.instance.headers:
            self.fields["headers"].help_text += " Headers are stored: leave blank to keep the current headers; {} removes them."
        else:
            self.fields["headers"].help_text += " Leave blank for none."

    def clean_headers(self):
        text = self.cleaned_data["headers"].strip()
        self.headers_given = bool(text)
        if not text:
            return self.instance.headers or {}
        try:
            headers = json_input.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
        except json_input.JSONInputError as exc:
            raise ValidationError(f"Not valid JSON: {exc}.") from None
        # Here rather than only on the model, for the reason given in JSONTextField.
        validators.validate_headers(headers)
        return headers

    def _post_clean(self):
        super()._post_clean()  # the instance now holds what was posted
        if "headers" in self.fields:
            try:
                services.target_check_host_change(target=self.instance, headers_given=self.headers_given)
            except ValidationError as exc:
                self._update_errors(exc)

    def save(self, commit=True):
        if not commit:
            return super().save(commit=False)
        services.target_save(target=self.instance, headers_given=self.headers_given)
        self._save_m2m()
        return self.instance


class TargetForm(TargetHeadersForm, WorkspaceModelForm):
    # Which optional fields each kind uses; the others are hidden in the browser and blanked on
    # save so a value typed before switching kinds neither lingers nor fails validation unseen.
    FIELDS_BY_KIND = {
        Target.Kind.OPENAI_CHAT: ("url", "headers", "model"),
        Target.Kind.HTTP_JSON: ("url", "headers", "request_template", "response_path"),
        Target.Kind.WEBSOCKET: ("url", "headers"),
        Target.Kind.PHONE: ("phone_number",),
        Target.Kind.DEMO: (),
        Target.Kind.REHEARSAL: ("rehearse_with",),
    }
    KIND_FIELDS = ("url", "phone_number", "headers", "request_template", "response_path", "model", "rehearse_with")
    BLANK_VALUES = {"headers": {}, "request_template": {}, "rehearse_with": None}
    # Voice targets of these kinds answer inside the loopback telephony, on a number it assigns.
    LOOPBACK_SHOW_WHEN = "channel=voice;kind=" + ",".join(Target.LOOPBACK_KINDS)
    duplicate_name_message = "A target with this name already exists in this workspace."
    field_order = ["name", "channel", "kind", "assigned_number", "url", "phone_number", "rehearse_with",
                   "dial_in_delay_seconds"]

    # Shown, never posted: demo and rehearsal voice targets get their number from Target.clean().
    assigned_number = forms.CharField(
        required=False, disabled=True, label="Phone number",
        help_text="Assigned by AssureAgent: demo and rehearsal voice targets answer on a fictional number of the "
                  "offline loopback telephony.")
    rehearse_with = forms.ModelChoiceField(
        queryset=Target.objects.filter(channel=Channel.CHAT), required=False, label="Rehearse with",
        help_text="The chat target whose replies this target speaks on a loopback call: rehearse a voice scenario "
                  "against your chat bot before it has a phone line.")

    request_template = JSONTextField(
        empty={},
        validator=validators.validate_json_object,
        required=False,
        help_text='The JSON body sent for each message; string values may hold {{message}} and {{session_id}}, '
        'e.g. {"text": "{{message}}", "session": "{{session_id}}"}.',
    )

    class Meta:
        model = Target
        fields = ["name", "channel", "kind", "url", "phone_number", "rehearse_with", "dial_in_delay_seconds",
                  "headers", "request_template", "response_path", "model"]
        labels = {"url": "URL", "response_path": "Response path (JSONPath)",
                  "dial_in_delay_seconds": "Dial-in delay (seconds)"}
        help_texts = {
            "url": "http(s):// for openai_chat and http_json, ws(s):// for websocket.",
            "phone_number": "E.164, e.g. +14155550123.",
            "response_path": "Where the reply text is in the response body, e.g. $.data.messages[0].text.",
            "dial_in_delay_seconds": "In inbound scenarios this target dials the armed number after this many "
                                     "seconds, as your system would.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.KIND_FIELDS:
            kinds = [kind for kind, used in self.FIELDS_BY_KIND.items() if name in used]
            show_when(self, name, "kind=" + ",".join(kinds))
        # Only chat targets of this workspace (WorkspaceModelForm scoped the queryset), never itself.
        self.fields["rehearse_with"].queryset = self.fields["rehearse_with"].queryset.exclude(pk=self.instance.pk)
        show_when(self, "rehearse_with", "channel=voice;kind=rehearsal")
        self.fields["dial_in_delay_seconds"].required = False
        show_when(self, "dial_in_delay_seconds", self.LOOPBACK_SHOW_WHEN)
        show_when(self, "assigned_number", self.LOOPBACK_SHOW_WHEN)
        stored = not self.instance._state.adding
        if stored and self.instance.channel == Channel.VOICE and self.instance.kind in Target.LOOPBACK_KINDS:
            self.initial["assigned_number"] = self.instance.phone_number
        else:
            self.fields["assigned_number"].widget.attrs["placeholder"] = "assigned when you save"

    def clean_dial_in_delay_seconds(self):
        # Optional in the form (most targets never dial in): blank keeps what the target has.
        value = self.cleaned_data.get("dial_in_delay_seconds")
        return self.instance.dial_in_delay_seconds if value is None else value

    def clean(self):
        cleaned = super().clean()
        used = self.FIELDS_BY_KIND.get(cleaned.get("kind"))
        if used is not None:
            for name in self.KIND_FIELDS:
                if name not in used and name in cleaned:
                    cleaned[name] = self.BLANK_VALUES.get(name, "")
        return cleaned


class TargetChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return f"{obj.name} ({obj.get_channel_display()} · {obj.get_kind_display()})"


def criteria_field(*, label: str, intro: str = "") -> JSONTextField:
    """The criteria textarea; ``static/js/editors.js`` turns it into rows of criteria.

    The kinds and their fields come from ``scenarios.validators`` so the editor offers exactly
    what the validator accepts.
    """
    schema = {
        kind: {"required": list(required), "optional": list(optional)}
        for kind, (required, optional) in validators.CRITERION_KINDS.items()
    }
    return JSONTextField(
        empty=[],
        validator=validators.validate_criteria,
        required=False,
        widget=forms.Textarea(attrs={
            "rows": 8, "spellcheck": "false", "class": "mono",
            "data-editor": "criteria", "data-kinds": json.dumps(schema),
        }),
        label=label,
        help_text=intro + 'A JSON list of criteria, each {"name": …, "kind": …} plus the fields of its kind, e.g. '
        '{"name": "greets", "kind": "contains", "speaker": "target", "text": "hello"}. '
        f'Kinds: {", ".join(validators.CRITERION_KINDS)}.',
    )


class ScenarioForm(WorkspaceModelForm):
    target = TargetChoiceField(queryset=Target.objects.all())
    criteria = criteria_field(label="Success criteria")

    class Meta:
        model = Scenario
        fields = ["name", "description", "channel", "direction", "inbound_window_seconds", "agent", "target",
                  "max_parallel_runs", "criteria"]
        labels = {
            "inbound_window_seconds": "Inbound window (seconds)",
            "max_parallel_runs": "Max parallel runs",
        }
        widgets = {"description": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        show_when(self, "direction", "channel=voice")
        show_when(self, "inbound_window_seconds", "channel=voice;direction=inbound")

    def clean(self):
        cleaned = super().clean()
        # The direction input is hidden for chat (chat is always outbound); a stale "inbound" left
        # in it from before switching channel is not the user's intent.
        if cleaned.get("channel") == Channel.CHAT:
            cleaned["direction"] = Scenario.Direction.OUTBOUND
        return cleaned


class PathForm(WorkspaceModelForm):
    parent_fields = ("scenario",)
    duplicate_name_message = "This scenario already has a path with this name."

    script = JSONTextField(
        empty=[],
        validator=validators.validate_script,
        required=False,
        widget=forms.Textarea(attrs={
            "rows": 8, "spellcheck": "false", "class": "mono",
            "data-editor": "script", "data-kinds": json.dumps(SCRIPT_STEP_KINDS),
        }),
        help_text='Optional steps for a deterministic caller, a JSON list such as '
        '[{"say": "Hi"}, {"expect": "(?i)how can I help"}, {"press": "1"}, {"pause_ms": 500}, {"end_call": true}]. '
        "Leave empty for an LLM caller that follows the narrative.",
    )
    criteria = criteria_field(label="Extra criteria", intro="Judged in addition to the scenario's criteria. ")

    class Meta:
        model = Path
        fields = ["name", "narrative", "script", "criteria"]
        widgets = {"narrative": forms.Textarea(attrs={"rows": 5})}


class ScheduleForm(forms.ModelForm):
    """A new schedule, from the scenario page's Schedules panel (the scenario comes from the URL)."""

    class Meta:
        model = Schedule
        fields = ["cron", "timezone", "repeat", "slack_webhook_url"]
        labels = {"cron": "Cron expression", "timezone": "Time zone", "slack_webhook_url": "Slack webhook URL"}
        widgets = {
            "cron": forms.TextInput(attrs={"placeholder": "0 6 * * 1-5", "class": "mono", "spellcheck": "false"}),
            "timezone": forms.TextInput(attrs={"list": "schedule-timezones", "spellcheck": "false"}),
            "slack_webhook_url": forms.URLInput(attrs={"placeholder": "https://hooks.slack.com/services/…",
                                                      "autocomplete": "off"}),
        }

    def _update_errors(self, errors):
        # The scenario comes from the URL, not from a field: what the model says of it (too many
        # schedules) is said of the whole form, rather than Django refusing an error on no field.
        if hasattr(errors, "error_dict") and "scenario" in errors.error_dict:
            errors.error_dict.setdefault(NON_FIELD_ERRORS, []).extend(errors.error_dict.pop("scenario"))
        super()._update_errors(errors)


"""Telephony in the v1 API: phone numbers, a run's call (a field of the run detail) and its recording."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.views import APIView

from assure.api_base import ModelCleanSerializer, WorkspaceViewSet
from assure.tenancy import request_workspace
from telephony import selectors, services
from telephony.models import Call, PhoneNumber
from telephony.views_pages import recording_page_url, recording_response


class PhoneNumberSerializer(ModelCleanSerializer):
    reserved_by = serializers.PrimaryKeyRelatedField(
        read_only=True, help_text="The armed inbound run that holds this number (null: free).")

    class Meta:
        model = PhoneNumber
        fields = ["id", "number", "direction", "provider", "label", "provider_sid", "reserved_by", "created_at"]
        # (provider, number) is unique across every workspace; the services check it, with words that
        # do not reveal whose number it is (DRF's own validator would only say "must make a unique set").
        validators = []


class PhoneNumberViewSet(WorkspaceViewSet):
    """Numbers provisioned with a provider: outbound ones the agents dial from, inbound ones that
    inbound runs reserve while armed. A number reserved by an armed run cannot be deleted, nor its
    number, provider or direction changed, until the run ends."""

    model = PhoneNumber
    serializer_class = PhoneNumberSerializer
    filterset_fields = ["direction", "provider"]

    def get_queryset(self):
        return selectors.phone_numbers_for(request_workspace(self.request))

    def perform_create(self, serializer):
        self._save(serializer, PhoneNumber(workspace=request_workspace(self.request), **serializer.validated_data))

    def perform_update(self, serializer):
        phone_number = serializer.instance
        for name, value in serializer.validated_data.items():
            setattr(phone_number, name, value)
        self._save(serializer, phone_number)

    def _save(self, serializer, phone_number: PhoneNumber) -> None:
        try:
            serializer.instance = services.phone_number_save(phone_number=phone_number)
        except services.NumberTaken as exc:
            raise serializers.ValidationError({"number": [str(exc)]}) from None
        except services.NumberHeld as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None

    @extend_schema(responses={204: None, 400: OpenApiResponse(description="An armed run holds the number.")})
    def destroy(self, request, *args, **kwargs):
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance):
        try:
            services.phone_number_delete(phone_number=instance)
        except services.NumberHeld as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None


# The run's call: a field of GET /api/v1/runs/{id}/, registered by telephony/apps.py -------------

class CallHistoryEntrySerializer(serializers.Serializer):
    """One status the provider reported; the list is in the order of the provider's sequence numbers."""

    status = serializers.ChoiceField(choices=Call.Status.choices)
    sequence = serializers.IntegerField()
    at = serializers.DateTimeField(help_text="When AssureAgent received it.")
    sip = serializers.CharField(required=False, help_text="The SIP response code, where the provider gave one.")


class RunCallSerializer(serializers.ModelSerializer):
    history = CallHistoryEntrySerializer(many=True, read_only=True)
    recording_url = serializers.SerializerMethodField(
        help_text="Where the call's WAV recording is served (null until it is stored): to members of the run's "
                  "workspace signed in, or with `Authorization: Token <key>`; also at "
                  "`/api/v1/runs/{id}/recording/`.")

    class Meta:
        model = Call
        fields = ["provider", "direction", "sid", "from_number", "to_number", "status", "history", "answered_at",
                  "ended_at", "hung_up_by", "error_code", "error_detail", "recording_url",
                  "recording_duration_seconds"]
        read_only_fields = fields

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_recording_url(self, call: Call) -> str | None:
        if not call.recording:
            return None
        url = recording_page_url(call.run_id)
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


def run_call_field() -> serializers.Field:
    """The ``call`` of a run's detail: null for chat runs (and voice runs not yet dialled or armed)."""
    return RunCallSerializer(read_only=True, allow_null=True,
                             help_text="The phone call of a voice run; null for chat runs.")


# The recording, for API token holders -----------------------------------------------------------

class AnyAccept(BaseContentNegotiation):
    """Audio players ask for ``audio/*``; the answer is the WAV (or a JSON error) whatever they accept."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None


class RunRecordingView(APIView):
    content_negotiation_class = AnyAccept

    @extend_schema(
        operation_id="runs_recording_retrieve",
        responses={(200, "audio/wav"): OpenApiTypes.BINARY,
                   (206, "audio/wav"): OpenApiResponse(OpenApiTypes.BINARY, description="The byte range asked for with `Range`."),
                   404: OpenApiResponse(description="No such run in the workspace, or no recording stored yet."),
                   416: OpenApiResponse(description="The `Range` asked for lies past the end of the recording.")},
    )
    def get(self, request, pk):
        """The run's call recording as a two-channel WAV (channel 1 our caller, channel 2 the target)."""
        call = selectors.recorded_call(workspace=request_workspace(request), run_id=pk)
        if call is None:
            raise Http404("No recording for this run.")
        return recording_response(call, request.headers.get("Range", ""))

"""Scenarios as text through the API: YAML export and import, Botium convo import
(``scenarios.portable`` does the work; these views parse, call it, and answer)."""

from __future__ import annotations

import json
import re

from django.core.exceptions import TooManyFilesSent
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, parsers, renderers, serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from assure.api_input import StrictJSONParser
from assure.tenancy import request_workspace, scoped
from scenarios import portable
from scenarios.api import PathSerializer, ScenarioSerializer
from scenarios.models import Scenario


class YAMLParser(parsers.BaseParser):
    """A YAML body of at most ``portable.MAX_YAML_BYTES``, loaded safely (``portable.load_yaml``).
    Only the import view takes YAML; every other endpoint stays JSON-only."""

    media_type = "application/yaml"

    def parse(self, stream, media_type=None, parser_context=None):
        # One byte more than the cap tells a body that is too large without reading all of it.
        body = stream.read(portable.MAX_YAML_BYTES + 1) if stream is not None else b""
        try:
            return portable.load_yaml(body)
        except portable.ImportRefused as exc:
            raise exceptions.ParseError(exc.detail["detail"]) from None


class TextYAMLParser(YAMLParser):
    media_type = "text/yaml"


class LegacyYAMLParser(YAMLParser):
    media_type = "application/x-yaml"


YAML_PARSERS = [YAMLParser, TextYAMLParser, LegacyYAMLParser]


class YAMLRenderer(renderers.BaseRenderer):
    """Lets a client ask for the export as YAML (``Accept: text/yaml``, ``application/yaml``):
    DRF refuses with 406 an Accept no renderer of the view offers. The export itself is already
    YAML; what this renders is the view's other answers (a 404, a 401) in the format asked for."""

    media_type = "text/yaml"
    format = "yaml"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        # Through JSON first: DRF's error messages are str subclasses the safe YAML dumper refuses.
        return portable.dump_yaml(json.loads(json.dumps(data))).encode()


class ApplicationYAMLRenderer(YAMLRenderer):
    media_type = "application/yaml"


class LegacyYAMLRenderer(YAMLRenderer):
    media_type = "application/x-yaml"


YAML_RENDERERS = [YAMLRenderer, ApplicationYAMLRenderer, LegacyYAMLRenderer]


def _filename(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "scenario"
    return f"{slug[:80]}.yaml"


class ScenarioExportView(APIView):
    # JSON first: a client that accepts anything gets its errors as JSON, as from every other endpoint.
    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, *YAML_RENDERERS]

    @extend_schema(responses={(200, "text/yaml"): OpenApiResponse(
        OpenApiTypes.STR, description="The scenario as YAML: agent and target by name, criteria, paths with "
                                      "their scripts and criteria. Importing it gives the same scenario back.")})
    def get(self, request, pk):
        scenario = get_object_or_404(scoped(Scenario, request_workspace(request)).select_related("agent", "target"),
                                     pk=pk)
        # The media type asked for when it is a YAML one (application/yaml…), else text/yaml.
        accepted = getattr(request, "accepted_renderer", None)
        media_type = accepted.media_type if isinstance(accepted, YAMLRenderer) else YAMLRenderer.media_type
        response = HttpResponse(portable.scenario_to_yaml(scenario), content_type=f"{media_type}; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{_filename(scenario.name)}"'
        return response


class ScenarioImportView(APIView):
    parser_classes = YAML_PARSERS

    @extend_schema(
        request={"application/yaml": OpenApiTypes.STR, "text/yaml": OpenApiTypes.STR},
        parameters=[OpenApiParameter("replace", bool, description=(
            "Update the scenario of the same name in place (its paths become the file's; paths of the same name "
            "keep their runs). Without it, an existing name is refused."))],
        responses={201: ScenarioSerializer},
        description=(f"Create a scenario from YAML as exported (at most {portable.MAX_YAML_BYTES:,} bytes, "
                     f"{portable.MAX_PATHS} paths; no aliases). Agent and target are found by name in this "
                     "workspace. All or nothing: a refused file writes nothing."),
    )
    def post(self, request):
        replace = request.query_params.get("replace", "false").strip().lower()
        if replace not in ("true", "false", "1", "0", "yes", "no", ""):
            raise serializers.ValidationError({"replace": ["Use true or false."]})
        try:
            scenario = portable.scenario_import(workspace=request_workspace(request), document=request.data,
                                                replace=replace in ("true", "1", "yes"))
        except portable.ImportRefused as exc:
            raise serializers.ValidationError(exc.detail) from None
        return Response(ScenarioSerializer(scenario).data, status=status.HTTP_201_CREATED)


class BotiumFilesSerializer(serializers.Serializer):
    files = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        help_text="File name → the file's text, e.g. {\"greeting.convo.txt\": \"Greeting\\n#me\\nhello\\n#bot\\nhi\"}.")

    def validate_files(self, files: dict) -> dict:
        if len(files) > portable.MAX_BOTIUM_FILES:
            raise serializers.ValidationError(f"At most {portable.MAX_BOTIUM_FILES} files at once.")
        total = 0
        for name, text in files.items():
            if not name or len(name) > 255:
                raise serializers.ValidationError("Each file needs a name of at most 255 characters.")
            size = len(text.encode("utf-8"))
            if size > portable.MAX_BOTIUM_FILE_BYTES:
                raise serializers.ValidationError(f"{name}: larger than {portable.MAX_BOTIUM_FILE_BYTES:,} bytes.")
            total += size
        if total > portable.MAX_BOTIUM_TOTAL_BYTES:
            raise serializers.ValidationError(
                f"The files add up to more than {portable.MAX_BOTIUM_TOTAL_BYTES:,} bytes.")
        return files


# A multipart body's framing (boundaries, each part's headers and file name) on top of the files'
# own bytes: generous per file, so only a body far beyond the files' cap is refused unread.
MULTIPART_FRAMING_BYTES_PER_FILE = 1024
MAX_BOTIUM_UPLOAD_BYTES = portable.MAX_BOTIUM_TOTAL_BYTES + portable.MAX_BOTIUM_FILES * MULTIPART_FRAMING_BYTES_PER_FILE


def _uploaded_files(request) -> dict[str, str]:
    """Multipart uploads (field ``files``, repeated) as file name → text, bounded like the JSON
    form. A body too large is refused from its Content-Length, before any of it is read."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0  # Django's parser refuses a malformed length itself
    if declared > MAX_BOTIUM_UPLOAD_BYTES:
        raise serializers.ValidationError(
            {"files": [f"The files add up to more than {portable.MAX_BOTIUM_TOTAL_BYTES:,} bytes."]})
    try:
        uploads = request.FILES.getlist("files")
    except TooManyFilesSent:  # more than settings.DATA_UPLOAD_MAX_NUMBER_FILES
        raise serializers.ValidationError(
            {"files": [f"At most {portable.MAX_BOTIUM_FILES} files at once."]}) from None
    if len(uploads) > portable.MAX_BOTIUM_FILES:
        raise serializers.ValidationError({"files": [f"At most {portable.MAX_BOTIUM_FILES} files at once."]})
    files: dict[str, str] = {}
    for upload in uploads:
        if upload.name in files:
            # The JSON form cannot name a file twice; here the second would silently replace the first.
            raise serializers.ValidationError(
                {"files": [f"{upload.name}: sent twice; each file needs its own name."]})
        if upload.size > portable.MAX_BOTIUM_FILE_BYTES:
            raise serializers.ValidationError(
                {"files": [f"{upload.name}: larger than {portable.MAX_BOTIUM_FILE_BYTES:,} bytes."]})
        try:
            files[upload.name] = upload.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise serializers.ValidationError({"files": [f"{upload.name}: not UTF-8 text."]}) from None
    return files


class ScenarioImportBotiumView(APIView):
    parser_classes = [StrictJSONParser, parsers.MultiPartParser]

    @extend_schema(
        request=BotiumFilesSerializer,
        responses={201: inline_serializer("BotiumImport", {"paths": PathSerializer(many=True)})},
        description=("Add one path per Botium `.convo.txt` file: `#me` → `say`, `#bot` → `expect` with Botium's "
                     "default matching (the text anywhere in the reply, case and spacing ignored), `#begin`/`#end` "
                     "ignored, `PAUSE` → `pause_ms`. JSON `{\"files\": {name: text}}` or multipart (field `files`). "
                     "A file that cannot be read is a 400 naming it and its line; then nothing is imported."),
    )
    def post(self, request, pk):
        scenario = get_object_or_404(scoped(Scenario, request_workspace(request)), pk=pk)
        if request.content_type.startswith("multipart/"):
            files = _uploaded_files(request)
            BotiumFilesSerializer(data={"files": files}).is_valid(raise_exception=True)
        else:
            parsed = BotiumFilesSerializer(data=request.data)
            parsed.is_valid(raise_exception=True)
            files = parsed.validated_data["files"]
        try:
            paths = portable.paths_import_botium(scenario=scenario, files=files)
        except portable.ImportRefused as exc:
            raise serializers.ValidationError(exc.detail) from None
        return Response({"paths": PathSerializer(paths, many=True).data}, status=status.HTTP_201_CREATED)

"""Telephony pages: the Phone numbers page (list, add, edit, delete) and a run's call recording.

Built like the authoring pages (``scenarios/views.py``), whose view classes they reuse: every query
is scoped to the request's workspace, viewers read and get 403 on every page that changes
something. Whether a number is free and whether an armed run holds it is decided by the services.
"""

from __future__ import annotations

import re

from django.contrib import messages
from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.urls import reverse
from django.views import generic
from rest_framework.exceptions import AuthenticationFailed

from assure.authentication import WorkspaceTokenAuthentication
from assure.tenancy import scoped
from scenarios.models import Agent
from scenarios.views import DeletePageMixin, FormPageMixin, ScopedMixin, crumbs
from telephony import selectors, services
from telephony.forms import PhoneNumberForm
from telephony.models import Call, PhoneNumber


class PhoneNumberList(ScopedMixin, generic.ListView):
    model = PhoneNumber
    template_name = "telephony/phone_number_list.html"
    context_object_name = "phone_numbers"

    def get_queryset(self):
        return selectors.phone_numbers_for(self.request.workspace)


class PhoneNumberFormMixin(FormPageMixin):
    model = PhoneNumber
    form_class = PhoneNumberForm
    noun = "phone number"

    def get_success_url(self):
        return reverse("telephony:phone-number-list")

    def form_valid(self, form):
        creating = form.instance._state.adding
        try:
            self.object = services.phone_number_save(phone_number=form.instance)
        except services.NumberTaken as exc:
            form.add_error("number", str(exc))
            return self.form_invalid(form)
        except services.NumberHeld as exc:
            form.add_error(None, str(exc))
            return self.form_invalid(form)
        messages.success(self.request, f"Phone number “{self.object}” {'added' if creating else 'saved'}.")
        return redirect(self.get_success_url())

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["breadcrumbs"] = crumbs(("Phone numbers", reverse("telephony:phone-number-list")))
        context["intro"] = (
            "A number provisioned with your telephony provider: agents dial from outbound numbers; inbound runs "
            "reserve an inbound number and wait for the target to dial it."
        )
        return context


class PhoneNumberCreate(PhoneNumberFormMixin, generic.CreateView):
    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["submit_label"] = "Add phone number"
        return context


class PhoneNumberUpdate(PhoneNumberFormMixin, generic.UpdateView):
    pass


def agents_dialling_from(workspace, number: str) -> list[Agent]:
    # Python, not a JSON lookup: ``outbound_numbers__contains`` is not available on SQLite.
    return [agent for agent in scoped(Agent, workspace).order_by("name") if number in (agent.outbound_numbers or [])]


class PhoneNumberDelete(DeletePageMixin, generic.DeleteView):
    model = PhoneNumber
    noun = "phone number"
    template_name = "telephony/phone_number_confirm_delete.html"

    def get_success_url(self):
        return reverse("telephony:phone-number-list")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["holding_run"] = selectors.holding_run(self.object)
        context["agents"] = agents_dialling_from(self.request.workspace, self.object.number)
        return context

    def form_valid(self, form):
        name = str(self.object)
        try:
            services.phone_number_delete(phone_number=self.object)
        except services.NumberHeld:
            return self.render_to_response(self.get_context_data(form=form, delete_refused=True), status=409)
        messages.success(self.request, f"Phone number “{name}” deleted.")
        return redirect(self.get_success_url())


# A run's recording ---------------------------------------------------------------------------------

def recording_page_url(run_id) -> str:
    return reverse("telephony:run-recording", args=[run_id])


# One range of bytes, as an audio element asks to seek: "bytes=a-b", "bytes=a-", "bytes=-n".
# Digits are bounded so no header can cost a huge integer conversion.
_RANGE_RE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")
_CHUNK_BYTES = 64 * 1024


def recording_response(call: Call, range_header: str = "") -> HttpResponseBase:
    """The stored WAV of ``call``, played in the page (not downloaded) and never cached by proxies.
    A single byte range is answered with 206 (seeking in the player); several ranges, or none,
    get the whole file; a range past the end is 416."""
    size = call.recording.size
    match = _RANGE_RE.fullmatch(range_header.strip())
    if match is None or match.groups() == ("", ""):
        response = FileResponse(call.recording.open("rb"), content_type="audio/wav", filename=f"run-{call.run_id}.wav")
    else:
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:
            start, end = max(size - int(last), 0), size - 1
        if start > end or start >= size:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        response = StreamingHttpResponse(_byte_range(call, start, end), status=206, content_type="audio/wav")
        response["Content-Length"] = str(end - start + 1)
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Disposition"] = f'inline; filename="run-{call.run_id}.wav"'
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _byte_range(call: Call, start: int, end: int):
    with call.recording.open("rb") as audio:
        audio.seek(start)
        left = end - start + 1
        while left > 0:
            chunk = audio.read(min(_CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _requester_workspace(request):
    """The signed-in member's workspace, or the workspace of an ``Authorization: Token`` header: the
    API gives this page's URL as a run's ``recording_url``, so a token opens it too."""
    if request.user.is_authenticated:
        return request.workspace
    try:
        authenticated = WorkspaceTokenAuthentication().authenticate(request)
    except AuthenticationFailed:
        return None
    return authenticated[1].workspace if authenticated else None


def run_recording(request, pk):
    """The WAV of a run's call, for members of the run's workspace; a 404 for everyone else (also
    anonymous visitors: nobody learns whether the run exists)."""
    call = selectors.recorded_call(workspace=_requester_workspace(request), run_id=pk)
    if call is None:
        raise Http404("No recording for this run.")
    return recording_response(call, request.headers.get("Range", ""))

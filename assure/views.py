import uuid
from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from assure.tenancy import switch_workspace, user_workspaces


# Where each page's section starts: a path's, function's or run's page has no list of its own.
SECTION_HOMES = {
    "scenarios": "/scenarios/", "paths": "/scenarios/",
    "agents": "/agents/", "functions": "/agents/",
    "targets": "/targets/", "queue": "/queue/", "results": "/results/", "runs": "/results/",
}


@login_required
def home(request):
    # Scenarios are where QA work starts; the page also tells a new user what to create first.
    return redirect("scenarios:scenario-list")


@login_required
@require_POST
def workspace_switch(request):
    """Make another of the user's workspaces the current one, then go back to the section
    (``/agents/…`` → ``/agents/``) the user was in: the object they were looking at belongs to the
    workspace they just left, and would now be a 404.

    A workspace the user is not a member of is a 404, like one that does not exist.
    """
    try:
        workspace_id = uuid.UUID(request.POST.get("workspace", ""))
    except ValueError:
        raise Http404("No such workspace.") from None
    workspace = user_workspaces(request.user).filter(pk=workspace_id).first()
    if workspace is None:
        raise Http404("No such workspace.")
    switch_workspace(request, workspace)
    messages.success(request, f"Switched to {workspace.name}.")
    next_url = request.POST.get("next", "")
    if not next_url.startswith("/") or not url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect("home")
    section = urlsplit(next_url).path.strip("/").split("/")[0]
    return redirect(SECTION_HOMES.get(section, "/"))

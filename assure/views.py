from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.shortcuts import render

from assure.tenancy import scoped


@login_required
def home(request):
    from runs.models import Run
    from scenarios.models import Agent, Scenario, Target

    workspace = request.workspace
    context = {
        "counts": {
            "scenarios": scoped(Scenario, workspace).count(),
            "agents": scoped(Agent, workspace).count(),
            "targets": scoped(Target, workspace).count(),
        },
        "runs_by_status": dict(
            scoped(Run, workspace).values_list("status").annotate(n=Count("id")).order_by()
        ),
    }
    return render(request, "assure/home.html", context)

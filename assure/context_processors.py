from assure.tenancy import user_workspaces


def workspace(request):
    return {
        "current_workspace": getattr(request, "workspace", None),
        "current_membership": getattr(request, "membership", None),
        # A callable: templates evaluate it only where the switcher is shown.
        "user_workspaces": lambda: list(user_workspaces(request.user)),
    }

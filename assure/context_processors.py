from assure.tenancy import user_workspaces


def workspace(request):
    current = getattr(request, "workspace", None)
    return {
        "current_workspace": current,
        "current_membership": getattr(request, "membership", None),
        "user_workspaces": (lambda: list(user_workspaces(request.user))) if current is not None else (lambda: []),
    }

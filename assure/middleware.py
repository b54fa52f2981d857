from assure.tenancy import membership_for, session_workspace


class WorkspaceMiddleware:
    """Sets ``request.workspace`` and ``request.membership`` for signed-in users.

    Computed eagerly (one indexed query for a signed-in user, none for anonymous ones): a lazy
    object wrapping None would be truthy and mislead every ``if request.workspace`` check.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.user.is_authenticated:
            request.workspace = session_workspace(request)
            request.membership = membership_for(request.user, request.workspace)
        else:
            request.workspace = None
            request.membership = None
        return self.get_response(request)

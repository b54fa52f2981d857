import pytest

from tests.factories import MembershipFactory, UserFactory, WorkspaceFactory


@pytest.fixture
def workspace(db):
    return WorkspaceFactory()


@pytest.fixture
def other_workspace(db):
    return WorkspaceFactory()


@pytest.fixture
def member(workspace):
    """A staff user who owns ``workspace`` and nothing else."""
    user = UserFactory(is_staff=True)
    MembershipFactory(workspace=workspace, user=user, role="owner")
    return user


@pytest.fixture
def member_client(client, member):
    client.force_login(member)
    return client

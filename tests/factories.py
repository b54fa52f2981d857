import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from assure.models import Membership, Workspace
from runs.models import Batch, CriterionResult, Run, RunEvent, ScheduleFiring, ToolInvocation, Turn
from scenarios.models import Agent, CustomFunction, Path, Scenario, Schedule, Target
from telephony.models import Call, PhoneNumber


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class WorkspaceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Workspace

    name = factory.Sequence(lambda n: f"Workspace {n}")
    slug = factory.Sequence(lambda n: f"ws-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    workspace = factory.SubFactory(WorkspaceFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.MEMBER


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    workspace = factory.SubFactory(WorkspaceFactory)
    name = factory.Sequence(lambda n: f"Caller {n}")
    instructions = "You are a polite customer."


class CustomFunctionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CustomFunction

    agent = factory.SubFactory(AgentFactory)
    workspace = factory.SelfAttribute("agent.workspace")
    name = factory.Sequence(lambda n: f"lookup_{n}")
    description = "Looks something up."
    parameters = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    url = "https://hooks.example.com/lookup"


class TargetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Target

    workspace = factory.SubFactory(WorkspaceFactory)
    name = factory.Sequence(lambda n: f"Bot {n}")
    channel = "chat"
    kind = Target.Kind.HTTP_JSON
    url = "http://127.0.0.1:9/chat"
    request_template = {"session": "{{session_id}}", "text": "{{message}}"}
    response_path = "$.reply"


class ScenarioFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Scenario

    workspace = factory.SubFactory(WorkspaceFactory)
    name = factory.Sequence(lambda n: f"Scenario {n}")
    channel = "chat"
    agent = factory.SubFactory(AgentFactory, workspace=factory.SelfAttribute("..workspace"))
    target = factory.SubFactory(TargetFactory, workspace=factory.SelfAttribute("..workspace"))
    criteria = [{"name": "greets", "kind": "contains", "speaker": "target", "text": "hello"}]


class PathFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Path

    scenario = factory.SubFactory(ScenarioFactory)
    workspace = factory.SelfAttribute("scenario.workspace")
    name = factory.Sequence(lambda n: f"Path {n}")
    narrative = "A customer who wants to book a table for two."
    script = [{"say": "Hi, I'd like to book a table."}, {"expect": "(?i)how many"}, {"say": "Two."}, {"end_call": True}]


class BatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Batch

    scenario = factory.SubFactory(ScenarioFactory)
    workspace = factory.SelfAttribute("scenario.workspace")


class ScheduleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Schedule

    scenario = factory.SubFactory(ScenarioFactory)
    workspace = factory.SelfAttribute("scenario.workspace")
    cron = "0 6 * * 1-5"
    timezone = "UTC"


class ScheduleFiringFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ScheduleFiring

    schedule = factory.SubFactory(ScheduleFactory)
    due_at = factory.LazyFunction(timezone.now)
    fired_at = factory.SelfAttribute("due_at")


class RunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Run

    path = factory.SubFactory(PathFactory)
    scenario = factory.SelfAttribute("path.scenario")
    workspace = factory.SelfAttribute("path.workspace")


class TurnFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Turn

    run = factory.SubFactory(RunFactory)
    seq = factory.Sequence(lambda n: n + 1)
    speaker = "caller"
    text = "Hello"
    started_ms = 0


class ToolInvocationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ToolInvocation

    run = factory.SubFactory(RunFactory)
    seq = factory.Sequence(lambda n: n + 1)
    name = "end_call"
    at_ms = 100


class CriterionResultFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CriterionResult

    run = factory.SubFactory(RunFactory)
    position = factory.Sequence(lambda n: n)
    name = "greets"
    kind = "contains"
    outcome = "passed"
    rationale = "The target said hello in turn 2."
    evidence = [2]


class RunEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RunEvent

    run = factory.SubFactory(RunFactory)
    at = factory.Faker("date_time", tzinfo=__import__("datetime").timezone.utc)
    to_status = "pending"
    to_stage = "queued"


class PhoneNumberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PhoneNumber

    workspace = factory.SubFactory(WorkspaceFactory)
    number = factory.Sequence(lambda n: f"+1415555{n:04d}")
    provider = "loopback"


class CallFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Call

    run = factory.SubFactory(RunFactory)
    workspace = factory.SelfAttribute("run.workspace")
    provider = "loopback"
    direction = "outbound"
    sid = factory.Sequence(lambda n: f"CA{n:032d}")
    from_number = "+15550150"
    to_number = "+15550100"

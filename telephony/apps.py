from django.apps import AppConfig


class TelephonyConfig(AppConfig):
    name = "telephony"

    def ready(self) -> None:
        # runs knows voice only through its registries: telephony registers the voice driver, and
        # the run's call as a field of the run detail in the API.
        from runs.api import register_run_detail_field
        from runs.execution import register_driver
        from telephony.api import run_call_field
        from telephony.driver import VoiceDriver

        register_driver("voice", VoiceDriver())
        register_run_detail_field("call", run_call_field, select_related=("call",))

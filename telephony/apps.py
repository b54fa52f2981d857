from django.apps import AppConfig


class TelephonyConfig(AppConfig):
    name = "telephony"

    def ready(self) -> None:
        # runs knows voice only through its driver registry; telephony registers the voice driver.
        from runs.execution import register_driver
        from telephony.driver import VoiceDriver

        register_driver("voice", VoiceDriver())

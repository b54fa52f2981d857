from django.contrib import admin

from assure.admin_scoping import WorkspaceScopedMixin, change_link
from runs.admin import RecordAdminMixin
from telephony.models import Call, PhoneNumber


@admin.register(PhoneNumber)
class PhoneNumberAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    list_display = ["number", "label", "direction", "provider", "workspace", "reserved_by_link", "reserved_until"]
    list_filter = [
        ("workspace", admin.RelatedOnlyFieldListFilter), "direction", "provider",
        ("reserved_by", admin.EmptyFieldListFilter),
    ]
    search_fields = ["number", "label", "provider_sid"]
    list_select_related = ["workspace", "reserved_by"]
    fields = ["workspace", "number", "direction", "provider", "provider_sid", "label", "reserved_by_link",
              "reserved_until"]
    # Reservations belong to inbound runs, which take and release them.
    readonly_fields = ["reserved_by_link", "reserved_until"]

    @admin.display(description="reserved by")
    def reserved_by_link(self, obj):
        return change_link(obj.reserved_by)


@admin.register(Call)
class CallAdmin(RecordAdminMixin, WorkspaceScopedMixin, admin.ModelAdmin):
    """Calls are records of what the provider did: read-only, like the runs they belong to."""

    list_display = ["sid", "run_link", "direction", "provider", "from_number", "to_number", "status", "hung_up_by",
                    "created_at"]
    list_filter = [("workspace", admin.RelatedOnlyFieldListFilter), "direction", "provider", "status", "hung_up_by"]
    search_fields = ["sid", "from_number", "to_number", "error_code"]
    list_select_related = ["workspace", "run"]
    fields = ["workspace", "run_link", "provider", "direction", "sid", "from_number", "to_number", "status", "history",
              "answered_at", "ended_at", "hung_up_by", "error_code", "error_detail", "relay_events", "recording",
              "recording_sid", "recording_duration_seconds", "created_at"]
    readonly_fields = fields

    @admin.display(description="run")
    def run_link(self, obj):
        return change_link(obj.run)

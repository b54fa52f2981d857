from django.contrib import admin

from assure.admin_scoping import WorkspaceScopedMixin, change_link
from telephony.models import PhoneNumber


@admin.register(PhoneNumber)
class PhoneNumberAdmin(WorkspaceScopedMixin, admin.ModelAdmin):
    list_display = ["number", "label", "provider", "workspace", "reserved_by_link", "reserved_until"]
    list_filter = [
        ("workspace", admin.RelatedOnlyFieldListFilter), "provider", ("reserved_by", admin.EmptyFieldListFilter),
    ]
    search_fields = ["number", "label", "provider_sid"]
    list_select_related = ["workspace", "reserved_by"]
    fields = ["workspace", "number", "provider", "provider_sid", "label", "reserved_by_link", "reserved_until"]
    # Reservations belong to inbound runs, which take and release them.
    readonly_fields = ["reserved_by_link", "reserved_until"]

    @admin.display(description="reserved by")
    def reserved_by_link(self, obj):
        return change_link(obj.reserved_by)

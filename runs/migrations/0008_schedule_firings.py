"""Schedule firings: each due time a schedule fired, and the batch it queued (unique per schedule and
due time). They live with the runs, so the scenarios app's schedules reference nothing of runs."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("runs", "0007_batches"),
        ("scenarios", "0005_schedules"),
    ]

    operations = [
        migrations.CreateModel(
            name="ScheduleFiring",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("due_at", models.DateTimeField()),
                ("fired_at", models.DateTimeField()),
                ("detail", models.TextField(blank=True, help_text="Why no batch was queued, when none was.")),
                ("batch", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                            related_name="schedule_firings", to="runs.batch")),
                ("schedule", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="firings",
                                               to="scenarios.schedule")),
            ],
            options={
                "ordering": ["-due_at"],
            },
        ),
        migrations.AddConstraint(
            model_name="schedulefiring",
            constraint=models.UniqueConstraint(fields=("schedule", "due_at"), name="schedule_firing_once_per_due_time"),
        ),
    ]

from django.db import migrations, models
from django.db.models import Exists, Max, OuterRef

TERMINAL = ["completed", "failed", "cancelled"]


def finish_ended_batches(apps, schema_editor):
    """Batches whose runs have all ended are finished already: mark them so, at their last run's
    end, so the sweep does not announce them as newly finished."""
    Batch = apps.get_model("runs", "Batch")
    Run = apps.get_model("runs", "Run")
    unfinished = Run.objects.filter(batch_id=OuterRef("pk")).exclude(status__in=TERMINAL)
    for batch in Batch.objects.filter(~Exists(unfinished)).annotate(last_end=Max("runs__ended_at")).iterator():
        batch.finished_at = batch.last_end or batch.created_at
        batch.save(update_fields=["finished_at"])


class Migration(migrations.Migration):

    dependencies = [
        ("runs", "0006_judge_record"),
    ]

    operations = [
        migrations.AddField(
            model_name="batch",
            name="finished_at",
            field=models.DateTimeField(
                blank=True, help_text="When its last run ended; set once (runs.services.batch_finish).", null=True),
        ),
        migrations.AddField(
            model_name="batch",
            name="repeat",
            field=models.PositiveSmallIntegerField(default=1, help_text="Runs of each path in this batch (1–100)."),
        ),
        migrations.AddIndex(
            model_name="batch",
            index=models.Index(fields=["scenario", "-created_at"], name="batch_scenario_latest"),
        ),
        migrations.AddIndex(
            model_name="batch",
            index=models.Index(condition=models.Q(("finished_at__isnull", True)), fields=["created_at"],
                               name="batch_unfinished"),
        ),
        migrations.AddConstraint(
            model_name="batch",
            constraint=models.CheckConstraint(condition=models.Q(("repeat__gte", 1), ("repeat__lte", 100)),
                                              name="batch_repeat_1_to_100"),
        ),
        migrations.RunPython(finish_ended_batches, migrations.RunPython.noop),
    ]

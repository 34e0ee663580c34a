# Compact metric storage (issue 16 part 7): MetricChunk, and the existing points packed into it.

from collections import defaultdict

import django.db.models.deletion
from django.db import migrations, models

from endpoints_app.monitoring.store import CHUNK_SLOTS, FIELDS, encode_chunk


def pack_existing_points(apps, schema_editor):
    """Pack every existing point into chunks, one endpoint at a time; 1 h points then leave the
    hot table (it keeps only 15 s and 1 min points, pruned by the hourly job)."""
    MetricPoint = apps.get_model("endpoints_app", "MetricPoint")
    MetricChunk = apps.get_model("endpoints_app", "MetricChunk")
    endpoint_ids = list(MetricPoint.objects.values_list("endpoint_id", flat=True).distinct().order_by())
    for endpoint_id in endpoint_ids:
        chunks: dict = defaultdict(lambda: defaultdict(dict))
        rows = MetricPoint.objects.filter(endpoint_id=endpoint_id, resolution__in=list(CHUNK_SLOTS))
        for entity, resolution, ts, *values in rows.values_list(
            "served_entity_name", "resolution", "ts", *FIELDS
        ).iterator(chunk_size=5000):
            span = resolution * CHUNK_SLOTS[resolution]
            chunks[(resolution, ts // span * span)][entity][ts] = dict(zip(FIELDS, values, strict=True))
        MetricChunk.objects.bulk_create(
            [
                MetricChunk(endpoint_id=endpoint_id, resolution=res, start=start, data=encode_chunk(res, start, series))
                for (res, start), series in chunks.items()
            ],
            batch_size=500,
        )
    MetricPoint.objects.filter(resolution=3600).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("endpoints_app", "0022_remote_changes"),
    ]

    operations = [
        migrations.CreateModel(
            name="MetricChunk",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("resolution", models.PositiveIntegerField()),
                ("start", models.BigIntegerField()),
                ("data", models.BinaryField()),
                (
                    "endpoint",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="metric_chunks",
                        to="endpoints_app.endpoint",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("endpoint", "resolution", "start"), name="unique_metric_chunk")
                ],
                "indexes": [models.Index(fields=["resolution", "start"], name="metric_chunk_prune_idx")],
            },
        ),
        migrations.RunPython(pack_existing_points, migrations.RunPython.noop),
    ]

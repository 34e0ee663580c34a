# Compact metric storage (issue 16 part 7): MetricChunk, and the existing points packed into it.

import json
import struct
import zlib
from collections import defaultdict

import django.db.models.deletion
import numpy as np
from django.db import migrations, models

# A frozen copy of monitoring.store's chunk format 1 as it was when this migration was written
# (a migration must not import the app's code, which moves on): the store reads format 1 by its
# header, which names the fields and slots.
CHUNK_SLOTS = {15: 60, 60: 60, 3600: 24}
EXACT_FIELDS = (
    "request_count",
    "count_4xx",
    "count_5xx",
    "samples",
    "shadow_compared",
    "shadow_agreed",
    "shadow_dropped",
)
ROUNDED_FIELDS = (
    "latency_sum_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_pct",
    "mem_pct",
    "gpu_pct",
    "replicas",
    "concurrency",
)
FIELDS = EXACT_FIELDS + ROUNDED_FIELDS
_MANTISSA_MASK = np.uint64(~((1 << 32) - 1) & 0xFFFFFFFFFFFFFFFF)


def encode_chunk(resolution, start, series):
    slots = CHUNK_SLOTS[resolution]
    names = sorted(series, key=lambda n: (n != "", n))
    columns = []
    refs = {}
    seen = {}
    for si, name in enumerate(names):
        points = series[name]
        for fi, fname in enumerate(FIELDS):
            column = np.full(slots, np.nan, dtype=np.float64)
            for ts, values in points.items():
                value = values.get(fname)
                if value is not None:
                    column[(ts - start) // resolution] = value
            if fname in ROUNDED_FIELDS:
                column = (column.view(np.uint64) & _MANTISSA_MASK).view(np.float64)
            key = column.tobytes()
            if key in seen:
                refs[f"{si},{fi}"] = seen[key]
                continue
            seen[key] = len(columns)
            columns.append(column)
    present = [sorted((ts - start) // resolution for ts in series[name]) for name in names]
    header = json.dumps(
        {"v": 1, "slots": slots, "series": names, "fields": list(FIELDS), "refs": refs, "present": present},
        separators=(",", ":"),
    ).encode()
    stacked = np.concatenate(columns) if columns else np.zeros(0, dtype=np.float64)
    shuffled = stacked.view(np.uint8).reshape(-1, 8).T.tobytes()
    return struct.pack(">I", len(header)) + zlib.compress(header + shuffled, 9)


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

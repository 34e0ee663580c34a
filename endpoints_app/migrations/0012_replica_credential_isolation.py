"""Replicas carry a per-replica credential and report the isolation they run under."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("endpoints_app", "0011_change_request_tags"),
    ]

    operations = [
        migrations.AddField(
            model_name="replica",
            name="credential",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="replica",
            name="isolation",
            field=models.CharField(blank=True, default="", max_length=128),
        ),
    ]

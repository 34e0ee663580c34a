# Remote changes through the gate (issue 16 part 4): an approval policy may name a workspace (null:
# local), and a change request may be for a remote workspace's endpoint, with the remote's
# config_version when it was proposed (stale detection at approval).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("endpoints_app", "0021_shadow_traffic"),
    ]

    operations = [
        migrations.AddField(
            model_name="approvalpolicy",
            name="workspace",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="approval_policies",
                to="endpoints_app.workspace",
            ),
        ),
        migrations.AddField(
            model_name="changerequest",
            name="base_config_version",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="changerequest",
            name="workspace",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="change_requests",
                to="endpoints_app.workspace",
            ),
        ),
    ]

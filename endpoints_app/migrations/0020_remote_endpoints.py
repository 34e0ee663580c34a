# Remote endpoints (issue 16, parts 2-3): an endpoint may belong to a remote workspace, polled by
# the remote poller; names are unique among local endpoints and within each workspace.
# Endpoint.objects is local endpoints only, Endpoint.fleet (the default manager) every one.

import django.db.models.deletion
import django.db.models.manager
from django.db import migrations, models

import endpoints_app.models.endpoints


class Migration(migrations.Migration):

    dependencies = [
        ('endpoints_app', '0019_rollout_plans'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='endpoint',
            options={'default_manager_name': 'fleet', 'ordering': ['name']},
        ),
        migrations.AlterModelManagers(
            name='endpoint',
            managers=[
                ('objects', endpoints_app.models.endpoints.LocalEndpointManager()),
                ('fleet', django.db.models.manager.Manager()),
            ],
        ),
        migrations.AddField(
            model_name='endpoint',
            name='remote_cursors',
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name='endpoint',
            name='remote_gone_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='endpoint',
            name='remote_id',
            field=models.CharField(blank=True, default='', max_length=128),
        ),
        migrations.AddField(
            model_name='endpoint',
            name='remote_seen_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='endpoint',
            name='remote_state',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='endpoint',
            name='workspace',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='endpoints', to='endpoints_app.workspace'),
        ),
        migrations.AddField(
            model_name='workspace',
            name='last_sweep_ok_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workspace',
            name='next_poll_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workspace',
            name='poll_failures',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name='endpoint',
            name='name',
            field=models.CharField(max_length=255),
        ),
        migrations.AddConstraint(
            model_name='endpoint',
            constraint=models.UniqueConstraint(condition=models.Q(('workspace__isnull', True)), fields=('name',), name='unique_local_endpoint_name'),
        ),
        migrations.AddConstraint(
            model_name='endpoint',
            constraint=models.UniqueConstraint(fields=('workspace', 'name'), name='unique_workspace_endpoint_name'),
        ),
    ]

# Rollout plans (issue 17): a new version moved onto an endpoint step by step behind metric gates,
# and a change request that carries a whole plan.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('endpoints_app', '0018_token_lifetime_bigint'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='changerequest',
            name='action',
            field=models.CharField(choices=[('create', 'Create'), ('update_config', 'Update Config'), ('ai_gateway', 'Ai Gateway'), ('tags', 'Tags'), ('delete', 'Delete'), ('rollout_plan', 'Rollout Plan')], max_length=16),
        ),
        migrations.CreateModel(
            name='RolloutPlan',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('endpoint_name', models.CharField(max_length=255)),
                ('state', models.CharField(choices=[('PENDING_APPROVAL', 'Pending Approval'), ('RUNNING', 'Running'), ('PAUSED', 'Paused'), ('SUCCEEDED', 'Succeeded'), ('ROLLED_BACK', 'Rolled Back'), ('ABORTED', 'Aborted'), ('FAILED', 'Failed'), ('REJECTED', 'Rejected')], default='RUNNING', max_length=20)),
                ('is_open', models.BooleanField(default=True)),
                ('spec', models.JSONField(default=dict)),
                ('target_config', models.JSONField(default=dict)),
                ('new_entity_names', models.JSONField(default=list)),
                ('steps', models.JSONField(default=list)),
                ('bake_seconds', models.PositiveIntegerField(default=300)),
                ('gates', models.JSONField(default=dict)),
                ('current_step', models.IntegerField(default=-1)),
                ('step_config_version', models.PositiveIntegerField(blank=True, null=True)),
                ('step_started_at', models.DateTimeField(blank=True, null=True)),
                ('step_baseline', models.JSONField(default=dict)),
                ('readings', models.JSONField(default=dict)),
                ('history', models.JSONField(default=list)),
                ('reason', models.TextField(blank=True, default='')),
                ('next_evaluation_at', models.DateTimeField(blank=True, null=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('closed_at', models.DateTimeField(blank=True, null=True)),
                ('author', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('change_request', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='rollout_plans', to='endpoints_app.changerequest')),
                ('endpoint', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='rollout_plans', to='endpoints_app.endpoint')),
            ],
            options={
                'ordering': ['-id'],
                'indexes': [models.Index(fields=['state'], name='rollout_plan_state_idx')],
                'constraints': [models.UniqueConstraint(condition=models.Q(('is_open', True)), fields=('endpoint',), name='one_open_rollout_plan')],
            },
        ),
    ]

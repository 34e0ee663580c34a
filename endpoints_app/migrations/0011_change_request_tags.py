# A change request may propose a tag change (tags decide which approval policies cover an endpoint).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('endpoints_app', '0010_usage_and_ai_gateway_changes'),
    ]

    operations = [
        migrations.AlterField(
            model_name='changerequest',
            name='action',
            field=models.CharField(choices=[('create', 'Create'), ('update_config', 'Update Config'), ('ai_gateway', 'Ai Gateway'), ('tags', 'Tags'), ('delete', 'Delete')], max_length=16),
        ),
    ]

# Shadow traffic (issue 17): a shadow's agreement and dropped mirrors per metric point.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('endpoints_app', '0020_remote_endpoints'),
    ]

    operations = [
        migrations.AddField(
            model_name='metricpoint',
            name='shadow_compared',
            field=models.FloatField(default=0),
        ),
        migrations.AddField(
            model_name='metricpoint',
            name='shadow_agreed',
            field=models.FloatField(default=0),
        ),
        migrations.AddField(
            model_name='metricpoint',
            name='shadow_dropped',
            field=models.FloatField(default=0),
        ),
    ]

# Reserved in order so that work in parallel keeps one chain; its owner fills in the operations.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('endpoints_app', '0018_token_lifetime_bigint'),
    ]

    operations: list = []

# Compact metric storage (issue 16 part 7). Reserved; filled in by that work.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("endpoints_app", "0022_remote_changes"),
    ]

    operations: list = []

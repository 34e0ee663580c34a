# Remote changes through the gate (issue 16 part 4). Reserved; filled in by that work.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("endpoints_app", "0021_shadow_traffic"),
    ]

    operations: list = []

"""What every Modelfleet process shares for operations: the request id of the request being
handled (``requestid``), log lines as text or JSON that carry it (``logformat``), and each
process's heartbeat with its resource use, read by the fleet-wide ``/metrics`` (``processes``).

Pure Python plus the shared Redis client: the gateway, Django and the Celery processes use it alike.
"""

"""Email notifications: config update results (the endpoint's ``email_notifications``) and alerts.

Everything goes through Django's mail API, so the SMTP settings (or the console backend when
none are set, or locmem in tests) apply. Mail is sent outside any transaction, and a mail server
that refuses is logged, never raised: a notification must not undo or block what it reports.
Bodies carry names, versions, times and the failure message, never tokens or environment values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from endpoints_app.models import Endpoint

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "[Modelfleet]"
MAX_MESSAGE_CHARS = 4000


def recipients(value: object) -> list[str]:
    """Distinct, stripped email addresses from a stored list (anything else is skipped)."""
    if not isinstance(value, list):
        return []
    out: list[str] = []
    for item in value:
        if isinstance(item, str) and "@" in item and item.strip() not in out:
            out.append(item.strip())
    return out


def send(to: Iterable[str], subject: str, body: str) -> bool:
    """Send one email to ``to``; False (and a log line) if there is nobody or the send failed."""
    to = list(to)
    if not to:
        return False
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, to, fail_silently=False)
    except Exception:  # SMTP down, refused, timed out: the caller's work is done regardless
        log.exception("could not send email %r to %d recipient(s)", subject, len(to))
        return False
    return True


def when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value else "-"


def notify_update_result(*, endpoint_id: str, version: int, ok: bool, message: str) -> None:
    """Email the endpoint's ``on_update_success`` or ``on_update_failure`` list about a finished rollout."""
    endpoint = Endpoint.objects.filter(id=endpoint_id).first()
    if endpoint is None:
        return
    settings_ = endpoint.email_notifications if isinstance(endpoint.email_notifications, dict) else {}
    to = recipients(settings_.get("on_update_success" if ok else "on_update_failure"))
    if not to:
        return
    if ok:
        subject = f"{SUBJECT_PREFIX} {endpoint.name}: config version {version} is live"
        outcome = f"Config version {version} of serving endpoint {endpoint.name} is live and serving all traffic."
    else:
        subject = f"{SUBJECT_PREFIX} {endpoint.name}: update to config version {version} failed"
        active = endpoint.active_config.version if endpoint.active_config is not None else None
        still = f"Config version {active} keeps serving." if active else "No config is serving."
        outcome = (
            f"The update of serving endpoint {endpoint.name} to config version {version} failed. {still}\n\n"
            f"Error:\n{(message or 'no details').strip()[:MAX_MESSAGE_CHARS]}"
        )
    body = (
        f"{outcome}\n\n"
        f"Endpoint:        {endpoint.name}\n"
        f"Config version:  {version}\n"
        f"Update started:  {when(endpoint.rollout_started_at)}\n"
        f"Update finished: {when(timezone.now())}\n\n"
        f"{settings.PUBLIC_URL}/\n"
    )
    send(to, subject, body)


def notify_rollout_plan(
    *,
    to: list[str],
    endpoint_name: str,
    plan_id: int,
    what: str,
    reason: str,
    readings: object,
    new_entities: list[str],
) -> bool:
    """Email the endpoint's failure list and the plan's author that a rollout plan rolled back
    (or failed): all traffic is on the previous version, the new one stays at 0 % until closed."""
    import json

    subject = f"{SUBJECT_PREFIX} {endpoint_name}: rollout plan {plan_id} {what}"
    body = (
        f"Rollout plan {plan_id} of serving endpoint {endpoint_name} {what}.\n\n"
        f"Reason: {reason.strip()[:MAX_MESSAGE_CHARS]}\n\n"
        "All traffic is back on the previous version. The new version "
        f"({', '.join(new_entities)}) stays deployed at 0 % for inspection until the plan is closed:\n"
        f"  modelfleet rollouts close {endpoint_name} {plan_id}\n\n"
        f"Gate readings:\n{json.dumps(readings, indent=2, sort_keys=True)[:MAX_MESSAGE_CHARS]}\n\n"
        f"Time: {when(timezone.now())}\n"
        f"{settings.PUBLIC_URL}/\n"
    )
    return send(to, subject, body)

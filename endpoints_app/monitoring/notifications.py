"""Email notifications (to be written)."""


def notify_update_result(*, endpoint_id: str, version: int, ok: bool, message: str) -> None:
    return None

"""Alert rules evaluated over the metric series (to be written)."""


def evaluate_alerts() -> None:
    return None

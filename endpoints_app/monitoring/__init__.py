"""Watching the fleet: polling, metrics, logs, health, alerts and payload logging."""

"""Payload logging (inference tables) (to be written)."""


def prune_payloads() -> int:
    return 0

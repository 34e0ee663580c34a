"""The API's wire shapes: one module per area (endpoints, alerts, audit, changes, logs, metrics,
payloads, permissions, secrets, tokens, usage), each a set of plain functions from prefetched rows
to JSON-ready dicts. Views import the area's module; no view builds a shape of its own."""

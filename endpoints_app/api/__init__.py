"""The REST API, wire-compatible with the Databricks serving-endpoints API (reference §1)."""

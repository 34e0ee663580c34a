"""The ``modelfleet`` command-line client.

It speaks the Databricks Model Serving wire protocol over HTTP (``requests`` only) and must stay
importable without Django: it runs on users' laptops, where start-up time matters. The server-side
commands (``up``, ``runtime``, ``setup``) are only dispatched from here and import their Django
code lazily.
"""

"""The model server: one OS process that loads one MLflow pyfunc model and serves it (see app.py)."""

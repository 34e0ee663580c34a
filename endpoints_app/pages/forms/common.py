"""What more than one form of the dashboard says."""

# An editor posted with an ETag that no longer matches (the service's PreconditionFailed).
STALE_FORM_MESSAGE = (
    "This endpoint changed since you opened this form (someone saved a change, or a rollout finished). "
    "Nothing was saved: reload the form to start from the current config, then make your change again."
)

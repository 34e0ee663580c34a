"""The serving domain: endpoints, config versions, tokens, runtime deployments."""

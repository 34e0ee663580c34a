"""The runtime: the agent that runs model-server processes on this host, and the model server."""

from endpoints_app.models.endpoints import (
    ConfigUpdate,
    ConfigVersion,
    Endpoint,
    EndpointTag,
    ServedEntity,
)
from endpoints_app.models.runtime import Deployment, DeploymentState, Replica, ReplicaState
from endpoints_app.models.tokens import AccessToken

__all__ = [
    "AccessToken",
    "ConfigUpdate",
    "ConfigVersion",
    "Deployment",
    "DeploymentState",
    "Endpoint",
    "EndpointTag",
    "Replica",
    "ReplicaState",
    "ServedEntity",
]

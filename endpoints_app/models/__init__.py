from endpoints_app.models.access import EndpointPermission, PermissionLevel, Role, UserProfile
from endpoints_app.models.audit import AppendOnlyError, AuditEvent
from endpoints_app.models.changes import ApprovalPolicy, ChangeRequest, ChangeRequestStatus
from endpoints_app.models.endpoints import (
    ConfigUpdate,
    ConfigVersion,
    Endpoint,
    EndpointTag,
    ServedEntity,
)
from endpoints_app.models.monitoring import (
    AlertEvent,
    AlertMetric,
    AlertRule,
    HealthChange,
    HealthStatus,
    LogCursor,
    LogKind,
    LogLine,
    MetricCursor,
    MetricPoint,
    PayloadLog,
    PollKind,
    PollRun,
    PollTarget,
)
from endpoints_app.models.rollout_plans import RolloutPlan, RolloutPlanState
from endpoints_app.models.runtime import (
    Deployment,
    DeploymentState,
    Replica,
    ReplicaState,
    RuntimeHost,
    ScalingDecision,
)
from endpoints_app.models.scim import ScimGroup, ScimUser
from endpoints_app.models.secrets import Secret, SecretAcl, SecretBackendType, SecretPermission, SecretScope
from endpoints_app.models.sso import GroupRoleMapping, SsoIdentity
from endpoints_app.models.tokens import AccessToken, ServicePrincipal, ServicePrincipalSecret
from endpoints_app.models.usage import UsageRecord
from endpoints_app.models.workspaces import Workspace, WorkspaceGrant, WorkspaceKind, WorkspaceRole, WorkspaceState

__all__ = [
    "AccessToken",
    "AppendOnlyError",
    "ApprovalPolicy",
    "ChangeRequest",
    "ChangeRequestStatus",
    "AuditEvent",
    "AlertEvent",
    "AlertMetric",
    "AlertRule",
    "HealthChange",
    "HealthStatus",
    "LogCursor",
    "LogKind",
    "LogLine",
    "MetricCursor",
    "MetricPoint",
    "PayloadLog",
    "PollKind",
    "PollRun",
    "PollTarget",
    "ConfigUpdate",
    "ConfigVersion",
    "Deployment",
    "EndpointPermission",
    "PermissionLevel",
    "Role",
    "UserProfile",
    "DeploymentState",
    "Endpoint",
    "EndpointTag",
    "Replica",
    "RolloutPlan",
    "RolloutPlanState",
    "ReplicaState",
    "RuntimeHost",
    "ScalingDecision",
    "UsageRecord",
    "Secret",
    "SecretAcl",
    "SecretBackendType",
    "SecretPermission",
    "SecretScope",
    "ServedEntity",
    "ServicePrincipal",
    "ServicePrincipalSecret",
    "GroupRoleMapping",
    "ScimGroup",
    "ScimUser",
    "SsoIdentity",
    "Workspace",
    "WorkspaceGrant",
    "WorkspaceKind",
    "WorkspaceRole",
    "WorkspaceState",
]

{{/*
The operator's API calls as RBAC rules: exactly the table "API calls and RBAC" of
docs/operator.md (tests/unit/chart checks both that they match and that no rule has a wildcard).
*/}}

{{/* Rules on objects inside the watched namespaces. */}}
{{- define "bgq.namespacedRules" -}}
# kopf watches the queues and stores its last-handled configuration in an annotation (patch).
- apiGroups: ["bgq.dev"]
  resources: ["backgroundqueues"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["bgq.dev"]
  resources: ["backgroundqueues/status"]
  verbs: ["patch"]
# blockOwnerDeletion on the worker Deployment's owner reference (OwnerReferencesPermissionEnforcement).
- apiGroups: ["bgq.dev"]
  resources: ["backgroundqueues/finalizers"]
  verbs: ["update"]
# Worker Deployments: read, created, drift put back (update, also as dry-run), replicas patched.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
# Worker pods: listed and annotated with pod-deletion-cost before a scale-down.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
# Secrets a queue names (Redis URL/password/CA): the operator reaches Redis itself.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on BackgroundQueues.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Rules on cluster-scoped objects: none (kopf's CRD/namespace scanning and peering are off). */}}
{{- define "bgq.clusterRules" -}}
{{- end }}

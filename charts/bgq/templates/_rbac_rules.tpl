{{/*
The operator's API calls, as RBAC rules. Keep in step with docs/operator.md ("API calls"):
tests/unit/chart checks that no rule uses a wildcard.
*/}}

{{/* Rules on objects inside the watched namespaces. */}}
{{- define "bgq.namespacedRules" -}}
# BackgroundQueues: watched by kopf; patched for finalizers/annotations and status.
- apiGroups: ["bgq.dev"]
  resources: ["backgroundqueues"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["bgq.dev"]
  resources: ["backgroundqueues/status"]
  verbs: ["get", "patch"]
# Worker Deployments: created, drift put back, replicas written by the autoscaler.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Worker pods: read for readiness and annotated with pod-deletion-cost before scale-down.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
# Secrets named by a spec: checked for existence only (values reach workers by secretKeyRef).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on BackgroundQueues.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Rules on cluster-scoped objects (empty when the operator needs none). */}}
{{- define "bgq.clusterRules" -}}
{{- end }}

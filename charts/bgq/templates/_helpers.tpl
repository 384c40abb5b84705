{{/*
Helpers shared by the bgq chart templates: names, labels, images, the restricted security
context every pod and container gets, and the namespaces the operator watches.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "bgq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (or just the release name when it already contains the chart name),
at most 63 characters; fullnameOverride replaces it. */}}
{{- define "bgq.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "chart-version" for the helm.sh/chart label. */}}
{{- define "bgq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "bgq.labels" -}}
helm.sh/chart: {{ include "bgq.chart" . }}
app.kubernetes.io/name: {{ include "bgq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bgq
{{- end }}

{{/* Selector labels of the operator pod (stable across upgrades). */}}
{{- define "bgq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bgq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Selector labels of the throw-away Redis pod. */}}
{{- define "bgq.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "bgq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{/* ServiceAccount the operator runs as. */}}
{{- define "bgq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bgq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false (name an existing ServiceAccount)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag" of the operator image; the tag defaults to appVersion. */}}
{{- define "bgq.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "repository:tag" of the worker image (helm test hook). */}}
{{- define "bgq.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/* Namespaces the operator reconciles, as a list: the list given, else the release
namespace in namespaced scope, else empty (= all namespaces, cluster scope). */}}
{{- define "bgq.watchNamespaceList" -}}
{{- $ns := .Values.operator.watchNamespaces }}
{{- if and (not $ns) (eq .Values.rbac.scope "namespaced") }}
{{- $ns = list .Release.Namespace }}
{{- end }}
{{- toJson (dict "items" $ns) }}
{{- end }}

{{/* The same namespaces comma-separated ("" = all namespaces). */}}
{{- define "bgq.watchNamespaces" -}}
{{- (include "bgq.watchNamespaceList" . | fromJson).items | join "," }}
{{- end }}

{{/* Pod-level securityContext of every pod of the chart (Pod Security Standard "restricted"). */}}
{{- define "bgq.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level securityContext of every container of the chart: non-root, read-only root
filesystem, no privilege escalation, every capability dropped, seccomp RuntimeDefault.
Pass the UID/GID as a dict: (dict "uid" 10001 "gid" 10001). */}}
{{- define "bgq.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Redis URL of the helm test hook: tests.redisUrl, else the chart's Redis, else fail. */}}
{{- define "bgq.testRedisUrl" -}}
{{- if .Values.tests.redisUrl }}
{{- .Values.tests.redisUrl }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "bgq.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Namespace of the helm test hook's BackgroundQueue and pod: the release namespace when
the operator watches it, else the first watched namespace. */}}
{{- define "bgq.testNamespace" -}}
{{- $ns := (include "bgq.watchNamespaceList" . | fromJson).items }}
{{- if or (not $ns) (has .Release.Namespace $ns) }}
{{- .Release.Namespace }}
{{- else }}
{{- first $ns }}
{{- end }}
{{- end }}

{{/* Name of the gateway's Deployment, Service and ServiceAccount: "<fullname>-gateway". */}}
{{- define "bgq.gatewayName" -}}
{{- printf "%s-gateway" (include "bgq.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* Selector labels of the gateway pods (stable across upgrades). */}}
{{- define "bgq.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "bgq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* The gateway's BGQ_REDIS_URL EnvVar: from gateway.redis.existingSecret (by reference),
else gateway.redis.url, else the chart's Redis; fails naming the values to set otherwise. */}}
{{- define "bgq.gatewayRedisEnv" -}}
{{- $redis := .Values.gateway.redis }}
{{- if and $redis.existingSecret $redis.url }}
{{- fail "gateway.redis: set either gateway.redis.url or gateway.redis.existingSecret, not both" }}
{{- end -}}
- name: BGQ_REDIS_URL
{{- if $redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret }}
      key: {{ $redis.existingSecretKey }}
{{- else if $redis.url }}
  value: {{ $redis.url | quote }}
{{- else if .Values.redis.enabled }}
  value: {{ printf "redis://%s-redis.%s.svc:6379/0" (include "bgq.fullname" .) .Release.Namespace | quote }}
{{- else }}
{{- fail "gateway.enabled=true needs a Redis: set gateway.redis.existingSecret (a Secret holding the URL), gateway.redis.url, or redis.enabled=true" }}
{{- end }}
{{- end }}

{{/* Name of the console's Deployment, Service and ServiceAccount: "<fullname>-console". */}}
{{- define "bgq.consoleName" -}}
{{- printf "%s-console" (include "bgq.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* Selector labels of the console pods (stable across upgrades). */}}
{{- define "bgq.consoleSelectorLabels" -}}
app.kubernetes.io/name: {{ include "bgq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: console
{{- end }}

{{/* The console's BGQ_REDIS_URL EnvVar (as bgq.gatewayRedisEnv, from console.redis). */}}
{{- define "bgq.consoleRedisEnv" -}}
{{- $redis := .Values.console.redis }}
{{- if and $redis.existingSecret $redis.url }}
{{- fail "console.redis: set either console.redis.url or console.redis.existingSecret, not both" }}
{{- end -}}
- name: BGQ_REDIS_URL
{{- if $redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret }}
      key: {{ $redis.existingSecretKey }}
{{- else if $redis.url }}
  value: {{ $redis.url | quote }}
{{- else if .Values.redis.enabled }}
  value: {{ printf "redis://%s-redis.%s.svc:6379/0" (include "bgq.fullname" .) .Release.Namespace | quote }}
{{- else }}
{{- fail "console.enabled=true needs a Redis: set console.redis.existingSecret (a Secret holding the URL), console.redis.url, or redis.enabled=true" }}
{{- end }}
{{- end }}

{{/* Whether the aggregated queue ClusterRoles are rendered (gateway or console RBAC auth). */}}
{{- define "bgq.queueRoles" -}}
{{- if or (and .Values.gateway.enabled .Values.gateway.auth.serviceAccount.enabled) (and .Values.console.enabled .Values.console.auth.serviceAccount.enabled) }}true{{- end }}
{{- end }}

{{/*
The console's settings from console.* (queues, token, session secret, proxy headers, cookies),
shared by `bgq console` (console.yaml) and `bgq gateway --console` (gateway.yaml). ServiceAccount
login is added by each, as its audience variable is shared with the gateway's own auth.
*/}}
{{- define "bgq.consoleSettingsEnv" -}}
{{- $auth := .Values.console.auth -}}
{{- with .Values.console.queues }}
- name: BGQ_CONSOLE_QUEUES
  value: {{ join "," . | quote }}
{{- end }}
{{- with $auth.existingSecret }}
- name: BGQ_CONSOLE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $auth.existingSecretKey }}
{{- end }}
{{- with $auth.sessionSecret.existingSecret }}
- name: BGQ_CONSOLE_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $auth.sessionSecret.existingSecretKey }}
{{- end }}
{{- with $auth.proxy.userHeader }}
- name: BGQ_CONSOLE_PROXY_USER_HEADER
  value: {{ . | quote }}
{{- end }}
{{- with $auth.proxy.groupsHeader }}
- name: BGQ_CONSOLE_PROXY_GROUPS_HEADER
  value: {{ . | quote }}
{{- end }}
- name: BGQ_CONSOLE_SECURE_COOKIES
  value: {{ .Values.console.secureCookies | quote }}
{{- end }}

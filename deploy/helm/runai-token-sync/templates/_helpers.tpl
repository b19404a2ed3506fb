{{- define "runai-token-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "runai-token-sync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "runai-token-sync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "runai-token-sync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "runai-token-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runai-token-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "runai-token-sync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "runai-token-sync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Rights on RunaiCredentials, their Secrets and Events, for a ClusterRole or a Role. */}}
{{- define "runai-token-sync.workloadRules" -}}
- apiGroups: ["tokensync.dev"]
  resources: ["runaicredentials"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["tokensync.dev"]
  resources: ["runaicredentials/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Whether a namespace is being deleted, before a token is requested for it:
# watched (metadata only) when all namespaces are served, else read one by one
# (granted by the ClusterRole only; without it the write is refused instead).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end -}}

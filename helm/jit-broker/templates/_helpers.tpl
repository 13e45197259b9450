{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "jit-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, or release-chart when they differ. */}}
{{- define "jit-broker.fullname" -}}
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

{{- define "jit-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jit-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jit-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jit-broker.labels" -}}
helm.sh/chart: {{ include "jit-broker.chart" . }}
{{ include "jit-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jit-broker
{{- end }}

{{- define "jit-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jit-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jit-broker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Secret names: the one you manage (existingSecret), else the one the chart creates. */}}
{{- define "jit-broker.databaseSecret" -}}
{{- default (printf "%s-database" (include "jit-broker.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "jit-broker.vaultSecret" -}}
{{- if eq .Values.vault.authMethod "token" }}
{{- default (printf "%s-vault" (include "jit-broker.fullname" .)) .Values.vault.token.existingSecret }}
{{- else }}
{{- default (printf "%s-vault" (include "jit-broker.fullname" .)) .Values.vault.approle.existingSecret }}
{{- end }}
{{- end }}

{{- define "jit-broker.checkpointSecret" -}}
{{- default (printf "%s-checkpoint" (include "jit-broker.fullname" .)) .Values.checkpoint.existingSecret }}
{{- end }}

{{- define "jit-broker.policiesConfigMap" -}}
{{- default (printf "%s-policies" (include "jit-broker.fullname" .)) .Values.policies.existingConfigMap }}
{{- end }}

{{/* The pod and container security settings, shared by the broker and the migration Job. */}}
{{- define "jit-broker.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "jit-broker.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* The ledger DSN variables (the writer's; the owner's too when `admin` is true). */}}
{{- define "jit-broker.databaseEnv" -}}
- name: BROKER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "jit-broker.databaseSecret" .root }}
      key: {{ .root.Values.database.urlKey }}
{{- if .admin }}
- name: BROKER_ADMIN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "jit-broker.databaseSecret" .root }}
      key: {{ .root.Values.database.adminUrlKey }}
{{- end }}
{{- end }}

{{/*
The `config` values as TOML. Not toToml: Helm reads every number in values as a float, and
toToml would write `ledger_max_queue = 20000.0`, which the broker refuses for an integer
setting. Whole numbers are written as integers (a float setting accepts them too).
*/}}
{{- define "jit-broker.configToml" -}}
{{- range $key, $value := . }}
{{- if kindIs "map" $value }}
{{- fail (printf "config.%s: tables are not supported here; use environment values instead" $key) }}
{{- else if kindIs "slice" $value }}
{{ $key }} = {{ toJson $value }}
{{- else if and (kindIs "float64" $value) (eq (floor $value) $value) }}
{{ $key }} = {{ int64 $value }}
{{- else if kindIs "string" $value }}
{{ $key }} = {{ toJson $value }}
{{- else }}
{{ $key }} = {{ $value }}
{{- end }}
{{- end }}
{{- end }}

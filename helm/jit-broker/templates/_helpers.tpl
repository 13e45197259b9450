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

{{/*
Transport security (docs/operations.md#tls). TLS is on unless `tls.disable` is set, and
then the certificate comes from exactly one source: a Secret you manage
(`tls.existingSecret`) or the cert-manager Certificate the chart creates. Anything else
fails the render, so a release never starts pods the broker would refuse to run.
*/}}
{{- define "jit-broker.tlsOn" -}}
{{- if not .Values.tls.disable }}true{{ end }}
{{- end }}

{{- define "jit-broker.tlsSecret" -}}
{{- $tls := .Values.tls -}}
{{- if $tls.disable }}
{{- if or $tls.existingSecret $tls.certManager.enabled $tls.clientCA.existingSecret }}
{{- fail "tls.disable is true but a certificate source (tls.existingSecret, tls.certManager.enabled or tls.clientCA.existingSecret) is set: choose one" }}
{{- end }}
{{- else if and $tls.existingSecret $tls.certManager.enabled }}
{{- fail "tls.existingSecret and tls.certManager.enabled are both set: choose one certificate source" }}
{{- else if $tls.existingSecret }}
{{- $tls.existingSecret }}
{{- else if $tls.certManager.enabled }}
{{- if not $tls.certManager.issuerRef.name }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name (the cert-manager Issuer or ClusterIssuer that signs the broker's certificate)" }}
{{- end }}
{{- printf "%s-tls" (include "jit-broker.fullname" .) }}
{{- else }}
{{- fail "TLS is on (the default) but has no certificate: set tls.existingSecret (a kubernetes.io/tls Secret with tls.crt and tls.key) or tls.certManager.enabled with tls.certManager.issuerRef; to serve plain HTTP instead, set tls.disable=true (not for production)" }}
{{- end }}
{{- end }}

{{/* The in-cluster name clients (and the ServiceMonitor) verify the certificate against. */}}
{{- define "jit-broker.serviceHost" -}}
{{- printf "%s.%s.svc" (include "jit-broker.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
One probe handler (dict "root" . "path" "/v1/...").
- TLS off: httpGet. TLS on: httpGet with scheme HTTPS (the kubelet does not verify the
  certificate; it asks the pod it started).
- mTLS: the kubelet cannot present a client certificate, so the probe runs in the
  container and presents the broker's own certificate to 127.0.0.1 (the client CA bundle
  must trust its issuer; the cert-manager Certificate gets the "client auth" usage). An
  HTTP error status (503 from /v1/health) makes urlopen raise: a non-zero exit.
*/}}
{{- define "jit-broker.probeHandler" -}}
{{- $root := .root -}}
{{- if and (include "jit-broker.tlsOn" $root) $root.Values.tls.clientCA.existingSecret }}
exec:
  command:
    - python
    - -c
    - >-
      import os, ssl, urllib.request;
      c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT);
      c.check_hostname = False;
      c.verify_mode = ssl.CERT_NONE;
      c.load_cert_chain(os.environ["BROKER_TLS_CERT_FILE"], os.environ["BROKER_TLS_KEY_FILE"]);
      urllib.request.urlopen("https://127.0.0.1:%s{{ .path }}" % os.environ["BROKER_PORT"], context=c, timeout=3)
{{- else }}
httpGet:
  path: {{ .path }}
  port: http
  {{- if include "jit-broker.tlsOn" $root }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{- end }}

{{/*
File paths of the mounted certificates. Every one is a Secret volume mounted as a
directory, never with subPath: the kubelet swaps the files in place when the Secret
changes (cert-manager renewal, a rotated CA bundle), and the broker re-reads them.
*/}}
{{- define "jit-broker.tlsDir" -}}/var/run/secrets/jit-broker/tls{{- end }}
{{- define "jit-broker.clientCADir" -}}/var/run/secrets/jit-broker/tls-client-ca{{- end }}
{{- define "jit-broker.vaultCADir" -}}/var/run/secrets/jit-broker/vault-ca{{- end }}
{{- define "jit-broker.vaultClientDir" -}}/var/run/secrets/jit-broker/vault-client{{- end }}
{{- define "jit-broker.databaseCADir" -}}/var/run/secrets/jit-broker/database-ca{{- end }}
{{- define "jit-broker.jwksCADir" -}}/var/run/secrets/jit-broker/jwks-ca{{- end }}

{{/* The ledger database CA (BROKER_DATABASE_SSLROOTCERT): env, mount and volume, shared by
the broker and the migration Job (both connect with sslmode=verify-full). */}}
{{- define "jit-broker.databaseCAEnv" -}}
{{- if .Values.database.caSecret }}
- name: BROKER_DATABASE_SSLROOTCERT
  value: {{ include "jit-broker.databaseCADir" . }}/ca.crt
{{- end }}
{{- end }}

{{- define "jit-broker.databaseCAMount" -}}
{{- if .Values.database.caSecret }}
- name: database-ca
  mountPath: {{ include "jit-broker.databaseCADir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "jit-broker.databaseCAVolume" -}}
{{- if .Values.database.caSecret }}
- name: database-ca
  secret:
    secretName: {{ .Values.database.caSecret }}
    defaultMode: 0444
    items:
      - key: {{ .Values.database.caKey }}
        path: ca.crt
{{- end }}
{{- end }}

{{/* Names. */}}
{{- define "altdb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "altdb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "altdb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; "altdb.selectorLabels" with a role picks one role's pods. */}}
{{- define "altdb.labels" -}}
helm.sh/chart: {{ include "altdb.chart" .root }}
app.kubernetes.io/name: {{ include "altdb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .role }}
app.kubernetes.io/part-of: altdb
{{- end -}}

{{- define "altdb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "altdb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "altdb.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "altdb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "altdb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "altdb.authSecretName" -}}
{{- default (printf "%s-auth" (include "altdb.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* http or https, as the TLS values say. */}}
{{- define "altdb.scheme" -}}
{{- if .Values.tls.secretName -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* Service DNS names. */}}
{{- define "altdb.leafService" -}}
{{- printf "%s-leaf" (include "altdb.fullname" .) -}}
{{- end -}}
{{- define "altdb.tailerService" -}}
{{- printf "%s-tailer" (include "altdb.fullname" .) -}}
{{- end -}}
{{- define "altdb.aggregatorService" -}}
{{- printf "%s-aggregator" (include "altdb.fullname" .) -}}
{{- end -}}
{{- define "altdb.etcdService" -}}
{{- printf "%s-etcd" (include "altdb.fullname" .) -}}
{{- end -}}

{{/* The metastore URL every role is given: etcd://host:port[,host:port..]/prefix. */}}
{{- define "altdb.metastore" -}}
{{- $hosts := list -}}
{{- if .Values.etcd.enabled -}}
{{- $service := include "altdb.etcdService" . -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc:%d" $service $i $service $.Release.Namespace (int $.Values.ports.etcdClient)) -}}
{{- end -}}
{{- else -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.enabled is false: set etcd.endpoints to your etcd's client URLs" -}}
{{- end -}}
{{- range .Values.etcd.endpoints -}}
{{- $hosts = append $hosts (. | trimPrefix "http://" | trimPrefix "https://" | trimSuffix "/") -}}
{{- end -}}
{{- end -}}
{{- printf "etcd://%s/%s" (join "," $hosts) (.Values.etcd.prefix | trimPrefix "/") -}}
{{- end -}}

{{/* A flat map of settings as TOML `key = value` lines (JSON scalars and arrays are TOML). */}}
{{- define "altdb.toml" -}}
{{- range $key, $value := . }}
{{ $key }} = {{ toJson $value }}
{{- end -}}
{{- end -}}

{{/* Settings every role shares: the metastore, secrets, TLS. */}}
{{- define "altdb.commonToml" -}}
metastore = {{ include "altdb.metastore" . | quote }}
cluster_secret_file = "/etc/altdb/auth/cluster-secret"
{{- if .Values.tls.secretName }}
tls_cert_file = "/etc/altdb/tls/tls.crt"
tls_key_file = "/etc/altdb/tls/tls.key"
tls_ca_file = "/etc/altdb/tls/ca.crt"
{{- end -}}
{{- end -}}

{{/* Volumes every role mounts: its config, the secrets, TLS, a writable /tmp. */}}
{{- define "altdb.volumes" -}}
- name: config
  configMap:
    name: {{ printf "%s-%s" (include "altdb.fullname" .root) .role }}
- name: auth
  secret:
    secretName: {{ include "altdb.authSecretName" .root }}
    defaultMode: 0440
{{- if .root.Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .root.Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "altdb.volumeMounts" -}}
- name: config
  mountPath: /etc/altdb/config
  readOnly: true
- name: auth
  mountPath: /etc/altdb/auth
  readOnly: true
{{- if .root.Values.tls.secretName }}
- name: tls
  mountPath: /etc/altdb/tls
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Probes on a role's HTTP port. */}}
{{- define "altdb.probes" -}}
startupProbe:
  httpGet: {path: /livez, port: {{ .port }}, scheme: {{ include "altdb.scheme" .root | upper }}}
  periodSeconds: 2
  failureThreshold: 150
livenessProbe:
  httpGet: {path: /livez, port: {{ .port }}, scheme: {{ include "altdb.scheme" .root | upper }}}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}, scheme: {{ include "altdb.scheme" .root | upper }}}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
{{- end -}}

{{- define "altdb.configChecksum" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap-" .role ".yaml") .root | sha256sum }}
{{- end -}}

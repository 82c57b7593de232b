{{/* Names: the chart's name, and the release's full name (63 characters at most, DNS). */}}
{{- define "loadpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loadpilot.fullname" -}}
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

{{/* The name of one component's objects: <fullname>-<component>. */}}
{{- define "loadpilot.component" -}}
{{- printf "%s-%s" (include "loadpilot.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loadpilot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "loadpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: loadpilot
{{- end }}

{{- define "loadpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loadpilot.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "loadpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "loadpilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The one image every role runs. */}}
{{- define "loadpilot.image" -}}
{{- printf "%s:%s" .Values.agent.image.repository .Values.agent.image.tag }}
{{- end }}

{{/*
The Secret holding the NATS token, and its key. Called from this chart and, through $tplYaml in
values.yaml, from the NATS chart (whose .Values hold the same `global`): both read
global.natsAuth and the release's name, so they agree.
*/}}
{{- define "loadpilot.natsTokenSecret" -}}
{{- $auth := (.Values.global).natsAuth | default dict }}
{{- $auth.existingSecret | default (printf "%s-nats-token" .Release.Name | trunc 63 | trimSuffix "-") }}
{{- end }}

{{- define "loadpilot.natsTokenKey" -}}
{{- (.Values.global).natsAuth.key | default "token" }}
{{- end }}

{{/* Whether clients send a token: always to the bundled NATS, to an external one when a Secret is named. */}}
{{- define "loadpilot.natsUsesToken" -}}
{{- if or .Values.nats.enabled .Values.global.natsAuth.existingSecret }}true{{ end }}
{{- end }}

{{/* The bundled NATS server's Service (the NATS chart's naming rule) and client port. */}}
{{- define "loadpilot.natsService" -}}
{{- $n := .Values.nats }}
{{- if ($n.service).name }}
{{- $n.service.name }}
{{- else if $n.fullnameOverride }}
{{- $n.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" $n.nameOverride }}
{{- ternary .Release.Name (printf "%s-%s" .Release.Name $name) (contains $name .Release.Name) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "loadpilot.natsPort" -}}
{{- (((.Values.nats.config).nats).port) | default 4222 }}
{{- end }}

{{/* The NATS client URL: the bundled server's Service, or externalNats.url. */}}
{{- define "loadpilot.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:%s" (include "loadpilot.natsService" .) (default .Release.Namespace .Values.nats.namespaceOverride) (include "loadpilot.natsPort" .) }}
{{- else }}
{{- required "externalNats.url is required when nats.enabled is false (e.g. nats://nats.messaging.svc:4222)" .Values.externalNats.url }}
{{- end }}
{{- end }}

{{/* Environment and mounts that connect a LoadPilot container to NATS. */}}
{{- define "loadpilot.natsEnv" -}}
{{- if include "loadpilot.natsUsesToken" . }}
- name: LOADPILOT_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "loadpilot.natsTokenSecret" . }}
      key: {{ include "loadpilot.natsTokenKey" . }}
{{- end }}
{{- end }}

{{- define "loadpilot.natsArgs" -}}
- --nats
- {{ include "loadpilot.natsUrl" . | quote }}
{{- if and (not .Values.nats.enabled) .Values.externalNats.credsSecret }}
- --creds
- /etc/loadpilot/nats-creds/{{ .Values.externalNats.credsKey }}
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.externalNats.tlsCASecret }}
- --tls-ca
- /etc/loadpilot/nats-ca/{{ .Values.externalNats.tlsCAKey }}
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.externalNats.tlsClientSecret }}
- --tls-cert
- /etc/loadpilot/nats-client/tls.crt
- --tls-key
- /etc/loadpilot/nats-client/tls.key
{{- end }}
{{- end }}

{{- define "loadpilot.natsMounts" -}}
{{- if and (not .Values.nats.enabled) .Values.externalNats.credsSecret }}
- name: nats-creds
  mountPath: /etc/loadpilot/nats-creds
  readOnly: true
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.externalNats.tlsCASecret }}
- name: nats-ca
  mountPath: /etc/loadpilot/nats-ca
  readOnly: true
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.externalNats.tlsClientSecret }}
- name: nats-client
  mountPath: /etc/loadpilot/nats-client
  readOnly: true
{{- end }}
{{- end }}

{{- define "loadpilot.natsVolumes" -}}
{{- if and (not .Values.nats.enabled) .Values.externalNats.credsSecret }}
- name: nats-creds
  secret:
    secretName: {{ .Values.externalNats.credsSecret }}
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.externalNats.tlsCASecret }}
- name: nats-ca
  secret:
    secretName: {{ .Values.externalNats.tlsCASecret }}
{{- end }}
{{- if and (not .Values.nats.enabled) .Values.externalNats.tlsClientSecret }}
- name: nats-client
  secret:
    secretName: {{ .Values.externalNats.tlsClientSecret }}
{{- end }}
{{- end }}

{{/* The coordinator's token Secret. */}}
{{- define "loadpilot.coordinatorTokenSecret" -}}
{{- .Values.coordinator.token.existingSecret | default (include "loadpilot.component" (dict "ctx" . "component" "coordinator")) }}
{{- end }}

{{/*
A token for a generated Secret: the one already in the cluster (so an upgrade keeps it), else a
new random one. Offline (helm template) nothing is found and a new one is made.
*/}}
{{- define "loadpilot.keptToken" -}}
{{- $found := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $found (hasKey ($found.data | default dict) .key) }}
{{- index $found.data .key }}
{{- else }}
{{- randAlphaNum 40 | b64enc }}
{{- end }}
{{- end }}

{{/* Pod scheduling keys shared by the agents' and the coordinator's pod templates. */}}
{{- define "loadpilot.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

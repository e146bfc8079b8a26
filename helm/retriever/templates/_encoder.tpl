{{/* The encoder service (values `encoder.*`): names, labels, the URL index pods call, and its checks. */}}

{{- define "retriever.encoderName" -}}
{{- printf "%s-encoder" (include "retriever.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Distinct from the server's selector (component: server), so neither Deployment adopts the other's pods. */}}
{{- define "retriever.encoderSelectorLabels" -}}
app.kubernetes.io/name: {{ include "retriever.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: encoder
{{- end }}

{{- define "retriever.encoderLabels" -}}
helm.sh/chart: {{ include "retriever.chart" . }}
{{ include "retriever.encoderSelectorLabels" . }}
app.kubernetes.io/version: {{ .Values.encoder.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: retriever
{{- end }}

{{/* RETRIEVER_ENCODER_URL of the index pods: the chart's encoder Service, else encoder.url, else empty (in-process model). */}}
{{- define "retriever.encoderUrl" -}}
{{- if .Values.encoder.enabled }}
{{- printf "http://%s:%d" (include "retriever.encoderName" .) (int .Values.encoder.port) }}
{{- else }}
{{- .Values.encoder.url }}
{{- end }}
{{- end }}

{{/* The encoder settings are chart values: server.settings may not set them behind the chart's back. */}}
{{- define "retriever.validateEncoder" -}}
{{- range $key, $_ := .Values.server.settings }}
{{- if hasPrefix "ENCODER_" (upper $key) }}
{{- fail (printf "server.settings.%s is managed by the chart: use encoder.* (encoder.enabled, encoder.url, encoder.api, encoder.sameModel, encoder.unhealthyAfterSeconds)" $key) }}
{{- end }}
{{- end }}
{{- if and .Values.encoder.enabled .Values.encoder.url }}
{{- fail "encoder.enabled deploys the chart's own encoder service; encoder.url names one deployed elsewhere: set one of them" }}
{{- end }}
{{- $startupBudget := mul .Values.probes.startup.periodSeconds .Values.probes.startup.failureThreshold }}
{{- if and (include "retriever.encoderUrl" .) (ge (int .Values.encoder.unhealthyAfterSeconds) (int $startupBudget)) }}
{{- fail (printf "encoder.unhealthyAfterSeconds (%v) must be shorter than the startup probe budget (%d s)" .Values.encoder.unhealthyAfterSeconds $startupBudget) }}
{{- end }}
{{- end }}

{{/* Env of the index container for a remote encoder (nothing when the model runs in process). */}}
{{- define "retriever.encoderEnv" -}}
{{- with (include "retriever.encoderUrl" .) }}
- name: RETRIEVER_ENCODER_URL
  value: {{ . | quote }}
- name: RETRIEVER_ENCODER_API
  value: {{ $.Values.encoder.api | quote }}
- name: RETRIEVER_ENCODER_SAME_MODEL
  value: {{ $.Values.encoder.sameModel | toString | quote }}
- name: RETRIEVER_ENCODER_UNHEALTHY_AFTER_S
  value: {{ $.Values.encoder.unhealthyAfterSeconds | toString | quote }}
# An index pod may start before its encoder: wait for it as long as the startup probe allows.
- name: RETRIEVER_ENCODER_STARTUP_TIMEOUT_S
  value: {{ mul $.Values.probes.startup.periodSeconds $.Values.probes.startup.failureThreshold | toString | quote }}
{{- end }}
{{- end }}

{{/* Chart name, overridable; 63 characters at most (DNS label). */}}
{{- define "retriever.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<name>".
*/}}
{{- define "retriever.fullname" -}}
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

{{- define "retriever.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "retriever.labels" -}}
helm.sh/chart: {{ include "retriever.chart" . }}
{{ include "retriever.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: retriever
{{- end }}

{{/* Labels the Deployment selects its pods by (never change them: selectors are immutable). */}}
{{- define "retriever.selectorLabels" -}}
app.kubernetes.io/name: {{ include "retriever.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "retriever.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "retriever.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Server image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "retriever.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $suffix := ternary .Values.gpu.imageTagSuffix "" .Values.gpu.enabled }}
{{- printf "%s:%s%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) $suffix }}
{{- end }}
{{- end }}

{{/* Image of the helm test pod: tests.image, else the server image. */}}
{{- define "retriever.testImage" -}}
{{- if .Values.tests.image.repository }}
{{- printf "%s:%s" .Values.tests.image.repository (.Values.tests.image.tag | default "latest") }}
{{- else }}
{{- include "retriever.image" . }}
{{- end }}
{{- end }}

{{/*
Memory request = limit in whole GiB (the formula documented in values.yaml):
  ceil(index.sizeGiB + corpus.sizeGiB + model.sizeGiB
       + server.workers * memory.perWorkerOverheadGiB + memory.headroomGiB)
*/}}
{{- define "retriever.computedMemoryGiB" -}}
{{- $v := .Values }}
{{- $perWorkers := mulf $v.server.workers $v.memory.perWorkerOverheadGiB }}
{{- /* gpu.enabled: the index lives on the GPU (retriever.gpuMemoryGiB), not in host memory. */}}
{{- $index := ternary 0.0 $v.index.sizeGiB $v.gpu.enabled }}
{{- $total := addf $index $v.corpus.sizeGiB $v.model.sizeGiB $perWorkers $v.memory.headroomGiB }}
{{- ceil $total | int }}
{{- end }}

{{/*
GPU memory need in whole GiB (gpu.enabled), the same terms as the host formula moved to the device:
  ceil(index.sizeGiB * bytes per value / 4 (the file is float32) + [model.sizeGiB / 2 with gpu.encoder:
       fp16 weights] + gpu.overheadGiB)
*/}}
{{- define "retriever.gpuMemoryGiB" -}}
{{- $v := .Values }}
{{- $perValue := get (dict "float16" 2.0 "bfloat16" 2.0 "float32" 4.0) $v.gpu.indexDtype }}
{{- $model := ternary (divf $v.model.sizeGiB 2.0) 0.0 $v.gpu.encoder }}
{{- ceil (addf (mulf $v.index.sizeGiB (divf $perValue 4.0)) $model $v.gpu.overheadGiB) | int }}
{{- end }}

{{/*
A Kubernetes memory quantity ("77Gi", "512Mi", "80G", "1073741824") in GiB, as a decimal string.
Fails on a suffix it does not know rather than guessing.
*/}}
{{- define "retriever.quantityToGiB" -}}
{{- $q := toString . | trim }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- if not $num }}
{{- fail (printf "cannot read the memory quantity %q (expected e.g. 64Gi, 512Mi, 80G)" $q) }}
{{- end }}
{{- $suffix := trimPrefix $num $q }}
{{- $bytesPer := dict "" 1.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 }}
{{- if not (hasKey $bytesPer $suffix) }}
{{- fail (printf "cannot read the memory quantity %q: unknown suffix %q (use Ki, Mi, Gi, Ti, k, M, G or T)" $q $suffix) }}
{{- end }}
{{- divf (mulf (float64 $num) (get $bytesPer $suffix)) 1073741824.0 }}
{{- end }}

{{/* Memory request of the server container in GiB (decimal string), explicit or computed. */}}
{{- define "retriever.memoryRequestGiB" -}}
{{- if .Values.resources }}
{{- include "retriever.quantityToGiB" (dig "requests" "memory" "" .Values.resources) }}
{{- else }}
{{- include "retriever.computedMemoryGiB" . }}
{{- end }}
{{- end }}

{{/* Resources of the server container. */}}
{{- define "retriever.resources" -}}
{{- if .Values.resources }}
{{- toYaml .Values.resources }}
{{- else }}
{{- $mem := printf "%sGi" (include "retriever.computedMemoryGiB" .) }}
requests:
  cpu: {{ .Values.cpu.request | quote }}
  memory: {{ $mem }}
limits:
  {{- if .Values.cpu.limit }}
  cpu: {{ .Values.cpu.limit | quote }}
  {{- end }}
  memory: {{ $mem }}
  {{- if .Values.gpu.enabled }}
  {{ .Values.gpu.resourceName }}: {{ int .Values.gpu.count }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the auth tokens file. */}}
{{- define "retriever.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "retriever.fullname" .)) }}
{{- end }}

{{- define "retriever.authMountPath" -}}
/etc/retriever/auth
{{- end }}

{{/* Startup probe budget in seconds. */}}
{{- define "retriever.startupBudgetSeconds" -}}
{{- mul (int .Values.probes.startup.periodSeconds) (int .Values.probes.startup.failureThreshold) }}
{{- end }}

{{/* A file name turned into a DNS-1123 label fragment (for ConfigMap names). */}}
{{- define "retriever.slug" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trimAll "-" }}
{{- end }}

{{/* The index directory the server reads: index.mountPath, or its index.subDir. */}}
{{- define "retriever.indexDir" -}}
{{- if .Values.index.subDir }}
{{- printf "%s/%s" (trimSuffix "/" .Values.index.mountPath) .Values.index.subDir }}
{{- else }}
{{- .Values.index.mountPath }}
{{- end }}
{{- end }}

{{/* The model directory for RETRIEVER_MODEL (model.source other than "index"). */}}
{{- define "retriever.modelPath" -}}
{{- if eq .Values.model.source "image" }}
{{- .Values.model.path }}
{{- else if .Values.model.path }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.path }}
{{- else }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/* cacheSizeLimit in bytes (RETRIEVER_CACHE_SIZE_LIMIT_BYTES): a corpus store that cannot fit fails at once. */}}
{{- define "retriever.cacheLimitBytes" -}}
{{- printf "%.0f" (mulf (float64 (include "retriever.quantityToGiB" .Values.cacheSizeLimit)) 1073741824.0) }}
{{- end }}

{{/* The fetch-index initContainer: `retriever fetch` from the server image into the index volume. */}}
{{- define "retriever.fetchContainer" -}}
{{- $f := .Values.index.fetch }}
{{- $args := list "fetch" "--no-progress" "--out" (include "retriever.indexDir" .) "--index-url" }}
{{- $args = concat $args $f.indexUrls }}
{{- with $f.indexSha256 }}{{ $args = concat $args (list "--index-sha256") . }}{{ end }}
{{- $args = concat $args (list "--corpus-url" $f.corpusUrl) }}
{{- with $f.corpusSha256 }}{{ $args = concat $args (list "--corpus-sha256" .) }}{{ end }}
{{- if $f.modelUrl }}
{{- $args = concat $args (list "--model-url" $f.modelUrl) }}
{{- with $f.modelSha256 }}{{ $args = concat $args (list "--model-sha256" .) }}{{ end }}
{{- else }}
{{- $args = concat $args (list "--model" (include "retriever.modelPath" .)) }}
{{- end }}
{{- with $f.preset }}{{ $args = concat $args (list "--preset" .) }}{{ end }}
{{- $args = concat $args $f.extraArgs }}
- name: fetch-index
  image: {{ include "retriever.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["retriever"]
  args:
    {{- toYaml $args | nindent 4 }}
  env:
    - name: HF_HUB_OFFLINE
      value: "1"
  resources:
    {{- toYaml $f.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: index
      mountPath: {{ .Values.index.mountPath }}
    - name: tmp
      mountPath: /tmp
    {{- if has .Values.model.source (list "pvc" "hostPath") }}
    - name: model
      mountPath: {{ .Values.model.mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

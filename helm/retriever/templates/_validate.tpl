{{/*
Render-time checks of rules the JSON schema cannot express. Each fails the render with a message
saying what is wrong and how to fix it. Included once, from deployment.yaml.
*/}}
{{- define "retriever.validate" -}}
{{- $v := .Values }}

{{- /* Graceful stop: the kubelet SIGKILLs at terminationGracePeriodSeconds, counted from the start
       of the preStop hook, so the sleep and the server's drain must both fit in it. */}}
{{- $stopNeeds := add (int $v.lifecycle.preStopSleepSeconds) (int $v.server.gracefulTimeoutSeconds) }}
{{- if le (int $v.terminationGracePeriodSeconds) $stopNeeds }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than lifecycle.preStopSleepSeconds (%d) + server.gracefulTimeoutSeconds (%d) = %d, or in-flight requests are killed before they finish; raise terminationGracePeriodSeconds above %d" (int $v.terminationGracePeriodSeconds) (int $v.lifecycle.preStopSleepSeconds) (int $v.server.gracefulTimeoutSeconds) $stopNeeds $stopNeeds) }}
{{- end }}

{{- /* A rollout must not be declared failed while a pod is still allowed to be loading. */}}
{{- $budget := int (include "retriever.startupBudgetSeconds" .) }}
{{- if le (int $v.progressDeadlineSeconds) $budget }}
{{- fail (printf "progressDeadlineSeconds (%d) must be greater than the startup probe budget probes.startup.periodSeconds x failureThreshold = %d s, or slow index loads mark every rollout as failed" (int $v.progressDeadlineSeconds) $budget) }}
{{- end }}

{{- /* Index sources. */}}
{{- if and (eq $v.index.source "pvc") (not $v.index.pvc.claimName) }}
{{- fail "index.source is \"pvc\" but index.pvc.claimName is empty: name an existing ReadOnlyMany PersistentVolumeClaim" }}
{{- end }}
{{- if and (eq $v.index.source "hostPath") (not $v.index.hostPath.path) }}
{{- fail "index.source is \"hostPath\" but index.hostPath.path is empty: give the index directory on the node" }}
{{- end }}
{{- if and (eq $v.index.source "initContainer") (not $v.index.fetch.enabled) (or (not $v.index.initContainer.image.repository) (not $v.index.initContainer.command)) }}
{{- fail "index.source is \"initContainer\" but index.initContainer.image.repository or index.initContainer.command is empty: give the fetcher's image and the command that writes the index into index.mountPath" }}
{{- end }}

{{- include "retriever.validateWiki" . }}

{{- /* Explicit resources must still say how much memory to reserve: placement and the HPA bound depend on it. */}}
{{- if and $v.resources (not (dig "requests" "memory" "" $v.resources)) }}
{{- fail "resources is set but has no requests.memory: every pod holds the whole index, so the memory request must be explicit (or leave resources empty to compute it from index.sizeGiB)" }}
{{- end }}

{{- /* GPU: one worker (each worker would hold its own copy of the index on the GPU), the need fits the card,
       and explicit resources still ask for the GPU. */}}
{{- if $v.gpu.enabled }}
{{- if ne (int $v.server.workers) 1 }}
{{- fail (printf "gpu.enabled needs server.workers = 1 (got %d): every worker would copy the whole index to the GPU; one worker's batches fill it" (int $v.server.workers)) }}
{{- end }}
{{- $need := int (include "retriever.gpuMemoryGiB" .) }}
{{- if and (gt (float64 $v.gpu.memoryGiB) 0.0) (gt (float64 $need) (float64 $v.gpu.memoryGiB)) }}
{{- fail (printf "the GPU memory need is %d GiB (index.sizeGiB %v as %s + model + gpu.overheadGiB) but gpu.memoryGiB is %v: use a GPU with more memory, a 16-bit gpu.indexDtype or a smaller index" $need $v.index.sizeGiB $v.gpu.indexDtype $v.gpu.memoryGiB) }}
{{- end }}
{{- if and $v.resources (not (dig "limits" $v.gpu.resourceName "" $v.resources)) }}
{{- fail (printf "gpu.enabled but the explicit resources have no limits.%s: add it (or leave resources empty to compute them)" $v.gpu.resourceName) }}
{{- end }}
{{- end }}

{{- /* Auth needs tokens from somewhere. */}}
{{- if and $v.auth.enabled (not $v.auth.existingSecret) (not $v.auth.tokens) }}
{{- fail "auth.enabled is true but neither auth.existingSecret nor auth.tokens is set" }}
{{- end }}

{{- /* HPA bounded by memory: maxReplicas full copies of the index must fit the budget and the nodes. */}}
{{- if $v.autoscaling.enabled }}
{{- $a := $v.autoscaling }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) is greater than autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- if and (kindIs "invalid" $a.targetCPUUtilizationPercentage) (not $a.podsMetric.enabled) }}
{{- fail "autoscaling.enabled is true but it has no metric: set autoscaling.targetCPUUtilizationPercentage or enable autoscaling.podsMetric (memory is never used: every pod holds the whole index)" }}
{{- end }}
{{- if not (gt (float64 $a.memoryBudgetGiB) 0.0) }}
{{- fail "autoscaling.enabled is true but autoscaling.memoryBudgetGiB is not set: give the GiB of memory the replicas may request together, so maxReplicas can be checked against it" }}
{{- end }}
{{- if not (gt (int $a.eligibleNodes) 0) }}
{{- fail "autoscaling.enabled is true but autoscaling.eligibleNodes is not set: give the number of nodes the pods may run on (one pod per node)" }}
{{- end }}
{{- $mem := float64 (include "retriever.memoryRequestGiB" .) }}
{{- $need := mulf (int $a.maxReplicas) $mem }}
{{- if gt $need (float64 $a.memoryBudgetGiB) }}
{{- fail (printf "autoscaling.maxReplicas (%d) x memory request (%s GiB) = %s GiB exceeds autoscaling.memoryBudgetGiB (%s GiB): lower autoscaling.maxReplicas to at most %d or raise the budget" (int $a.maxReplicas) (toString $mem) (toString $need) (toString $a.memoryBudgetGiB) (int (floor (divf $a.memoryBudgetGiB $mem)))) }}
{{- end }}
{{- if gt (int $a.maxReplicas) (int $a.eligibleNodes) }}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds autoscaling.eligibleNodes (%d): the required pod anti-affinity allows one pod per node, so replicas beyond %d would stay Pending; lower autoscaling.maxReplicas or add nodes" (int $a.maxReplicas) (int $a.eligibleNodes) (int $a.eligibleNodes)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Rules of the wiki-18 path: the fetch initContainer, the model source, the rollout strategy. */}}
{{- define "retriever.validateWiki" -}}
{{- $v := .Values }}
{{- $f := $v.index.fetch }}
{{- if $f.enabled }}
{{- if not (has $v.index.source (list "initContainer" "hostPath")) }}
{{- fail (printf "index.fetch.enabled needs index.source \"initContainer\" (an emptyDir) or \"hostPath\" (kept on the node), not %q (a pvc is mounted read-only by the pods: fill it once with `retriever fetch` in a Job, then serve it with index.source pvc)" $v.index.source) }}
{{- end }}
{{- if not $v.index.subDir }}
{{- fail "index.fetch.enabled needs index.subDir (e.g. wiki-18): the import writes beside it and renames it into place, which the volume's root cannot be" }}
{{- end }}
{{- if or (not $f.indexUrls) (not $f.corpusUrl) }}
{{- fail "index.fetch.enabled needs index.fetch.indexUrls (the index file or its parts, in order) and index.fetch.corpusUrl" }}
{{- end }}
{{- if and $f.indexSha256 (ne (len $f.indexSha256) (len $f.indexUrls)) }}
{{- fail (printf "index.fetch.indexSha256 has %d checksum(s) for %d URL(s): give one per part, in order, or none" (len $f.indexSha256) (len $f.indexUrls)) }}
{{- end }}
{{- if and (not $f.modelUrl) (eq $v.model.source "index") }}
{{- fail "index.fetch.enabled with model.source \"index\" needs index.fetch.modelUrl (a .tar.gz of the model directory), or a model.source (image, pvc, hostPath) to copy the model from" }}
{{- end }}
{{- if and (eq $v.index.source "hostPath") (ne $v.index.hostPath.type "DirectoryOrCreate") (ne $v.index.hostPath.type "Directory") }}
{{- fail "index.hostPath.type must be Directory or DirectoryOrCreate with index.fetch" }}
{{- end }}
{{- end }}
{{- if and (ne $v.model.source "index") (not $v.model.path) (eq $v.model.source "image") }}
{{- fail "model.source is \"image\" but model.path is empty: give the model directory's path inside the image" }}
{{- end }}
{{- if and (eq $v.model.source "pvc") (not $v.model.pvc.claimName) }}
{{- fail "model.source is \"pvc\" but model.pvc.claimName is empty" }}
{{- end }}
{{- if and (eq $v.model.source "hostPath") (not $v.model.hostPath.path) }}
{{- fail "model.source is \"hostPath\" but model.hostPath.path is empty" }}
{{- end }}
{{- if and (eq $v.strategy.type "RollingUpdate") (not $v.strategy.rollingUpdate) }}
{{- fail "strategy.type RollingUpdate needs strategy.rollingUpdate (maxSurge, maxUnavailable)" }}
{{- end }}
{{- end }}

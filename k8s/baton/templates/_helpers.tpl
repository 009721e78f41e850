{{/*
Names, labels and the pieces the templates share.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "baton.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 53 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every resource name. Kept to 53 characters: KubeRay rejects longer RayCluster names
because it appends suffixes such as "-head-svc" to build 63-character service names.
*/}}
{{- define "baton.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "baton.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select this release's objects. */}}
{{- define "baton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "baton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object the chart renders. */}}
{{- define "baton.labels" -}}
helm.sh/chart: {{ include "baton.chart" . }}
{{ include "baton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: baton
{{- end -}}

{{/* Name of the RayCluster (KubeRay labels its pods with it as ray.io/cluster). */}}
{{- define "baton.rayClusterName" -}}
{{- include "baton.fullname" . -}}
{{- end -}}

{{- define "baton.settingsConfigMapName" -}}
{{- printf "%s-settings" (include "baton.fullname" .) -}}
{{- end -}}

{{- define "baton.probeConfigMapName" -}}
{{- printf "%s-probe" (include "baton.fullname" .) -}}
{{- end -}}

{{- define "baton.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "baton.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secret holding the auth token: the existing one, or the one the chart creates. */}}
{{- define "baton.authSecretName" -}}
{{- default (printf "%s-auth" (include "baton.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/*
Token for the chart's Secret: the configured one, else the one already in the cluster (so an upgrade
keeps it), else a new random one.
*/}}
{{- define "baton.authToken" -}}
{{- if .Values.auth.token -}}
{{- .Values.auth.token -}}
{{- else -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "baton.authSecretName" .) -}}
{{- if and $old $old.data (hasKey $old.data .Values.auth.secretKey) -}}
{{- index $old.data .Values.auth.secretKey | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Image reference; call with (dict "image" <override map> "root" $). */}}
{{- define "baton.image" -}}
{{- $img := merge (deepCopy (default dict .image)) .root.Values.image -}}
{{- printf "%s:%s" $img.repository (toString (default .root.Chart.AppVersion $img.tag)) -}}
{{- end -}}

{{/* A string quoted for bash (single quotes, embedded quotes escaped). */}}
{{- define "baton.shellQuote" -}}
{{- printf "'%s'" (replace "'" "'\\''" (toString .)) -}}
{{- end -}}

{{/* JSON of the custom resource one worker asks for, e.g. {"baton_prefill":1}. */}}
{{- define "baton.actorResources" -}}
{{- dict .rayResource 1 | toJson -}}
{{- end -}}

{{/* Fails the render when a required worker group is missing or cannot hold its workers. */}}
{{- define "baton.checkGroup" -}}
{{- $name := .name -}}
{{- $g := index .root.Values.workerGroups $name -}}
{{- if not $g -}}
{{- fail (printf "workerGroups.%s is required: baton runs its %s workers there" $name $name) -}}
{{- end -}}
{{- if not $g.rayResource -}}
{{- fail (printf "workerGroups.%s.rayResource must name the Ray custom resource of the group" $name) -}}
{{- end -}}
{{- if lt (int $g.workers) 1 -}}
{{- fail (printf "workerGroups.%s.workers must be at least 1" $name) -}}
{{- end -}}
{{- $need := mulf (float64 $g.workers) (float64 (default 0 $g.gpusPerWorker)) -}}
{{- $have := mulf (float64 $g.replicas) (float64 (default 0 $g.gpus)) -}}
{{- if gt $need $have -}}
{{- fail (printf "workerGroups.%s: %v workers x %v GPUs need %v GPUs but %v pods x %v GPUs give %v" $name $g.workers (default 0 $g.gpusPerWorker) $need $g.replicas (default 0 $g.gpus) $have) -}}
{{- end -}}
{{- end -}}

{{/* The `baton serve` command line, one flag per line. */}}
{{- define "baton.serveCommand" -}}
{{- $v := .Values -}}
{{- $p := $v.workerGroups.prefill -}}
{{- $d := $v.workerGroups.decode -}}
baton serve \
  --model {{ include "baton.shellQuote" $v.serve.model }} \
  --prefill-workers {{ int $p.workers }} \
  --decode-workers {{ int $d.workers }} \
  --device {{ include "baton.shellQuote" $v.serve.device }} \
  --dtype {{ include "baton.shellQuote" $v.serve.dtype }} \
  --host 0.0.0.0 \
  --port {{ int $v.serve.port }} \
  --ray-address auto \
  --max-batch-size {{ int $v.serve.maxBatchSize }} \
  --prefill-resources {{ include "baton.shellQuote" (include "baton.actorResources" $p) }} \
  --decode-resources {{ include "baton.shellQuote" (include "baton.actorResources" $d) }} \
  --prefill-num-gpus {{ $p.gpusPerWorker }} \
  --decode-num-gpus {{ $d.gpusPerWorker }} \
  --prefill-num-cpus {{ $p.cpusPerWorker }} \
  --decode-num-cpus {{ $d.cpusPerWorker }}
{{- if $v.auth.enabled }} \
  --auth-token-file /etc/baton/auth/{{ $v.auth.secretKey }}
{{- end }}
{{- if $v.tls.enabled }} \
  --tls-cert /etc/baton/tls/{{ $v.tls.certKey }} \
  --tls-key /etc/baton/tls/{{ $v.tls.keyKey }}
{{- end }}
{{- if gt (int $v.serve.httpPort) 0 }} \
  --http-port {{ int $v.serve.httpPort }}
{{- else }} \
  --metrics-port {{ int $v.metrics.port }}
{{- end }}
{{- range $v.serve.extraArgs }} \
  {{ include "baton.shellQuote" . }}
{{- end }}
{{- end -}}

{{/*
Script of the head container. KubeRay leaves the command alone (ray.io/overwrite-container-cmd) and
puts the `ray start --head --block ...` it built from rayStartParams in $KUBERAY_GEN_RAY_START_CMD.
The script execs that in the background (so $ray_pid is the Ray process itself), waits for the node,
starts `baton serve` against it, and exits (so the container restarts) as soon as either process
stops; SIGTERM stops both.
*/}}
{{- define "baton.headScript" -}}
set -u
: "${KUBERAY_GEN_RAY_START_CMD:?is set by KubeRay; this container must run in a RayCluster head}"
ulimit -n 65536 || true
serve_pid=""
eval "exec $KUBERAY_GEN_RAY_START_CMD" &
ray_pid=$!
trap 'kill -TERM $serve_pid $ray_pid 2>/dev/null' TERM INT
deadline=$((SECONDS + {{ int .Values.serve.rayStartTimeoutSeconds }}))
until ray health-check --address "${RAY_ADDRESS:-127.0.0.1:6379}" >/dev/null 2>&1; do
  if ! kill -0 "$ray_pid" 2>/dev/null; then echo "baton: ray start exited" >&2; exit 1; fi
  if [ "$SECONDS" -ge "$deadline" ]; then echo "baton: the Ray head did not come up" >&2; exit 1; fi
  sleep 2
done
{{ include "baton.serveCommand" . }} &
serve_pid=$!
wait -n
status=$?
kill -TERM $serve_pid $ray_pid 2>/dev/null
wait
exit "$status"
{{- end -}}

{{/* Probe action: native gRPC, or the TLS checker from the probe ConfigMap when TLS is on. */}}
{{- define "baton.probeAction" -}}
{{- if .Values.tls.enabled -}}
exec:
  command:
    - python
    - /etc/baton/probe/grpc_health_probe.py
    - --port
    - {{ .Values.serve.port | quote }}
    - --service
    - {{ .Values.probes.service | quote }}
    - --ca
    - /etc/baton/tls/{{ default .Values.tls.certKey .Values.tls.caKey }}
    - --server-name
    - {{ .Values.tls.probeServerName | quote }}
    - --timeout
    - {{ .Values.probes.readiness.timeoutSeconds | quote }}
{{- else -}}
grpc:
  port: {{ int .Values.serve.port }}
  service: {{ .Values.probes.service | quote }}
{{- end -}}
{{- end -}}

{{/* Environment shared by all Ray containers. */}}
{{- define "baton.envFrom" -}}
- configMapRef:
    name: {{ include "baton.settingsConfigMapName" . }}
{{- end -}}

{{/* Cache volume of every Ray pod. */}}
{{- define "baton.cacheVolume" -}}
- name: cache
{{- if .Values.cache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.cache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.cache.sizeLimit }}
{{- end }}
{{- end -}}

{{/*
rayStartParams of a group as strings (the CRD's type). num-gpus comes from the group's GPU count, so a
pod never advertises GPUs it did not request; a named custom resource is passed as KubeRay itself
writes it, single-quoted JSON, which survives the shell of `ray start` and KubeRay's own parser.
Call with (dict "params" <map> "gpus" <n> ["resource" <name> "capacity" <n>]).
*/}}
{{- define "baton.rayStartParams" -}}
{{- $out := dict -}}
{{- range $key, $value := (default dict .params) -}}
{{- $_ := set $out $key (toString $value) -}}
{{- end -}}
{{- $_ := set $out "num-gpus" (toString (default 0 .gpus)) -}}
{{- if .resource -}}
{{- $_ := set $out "resources" (printf "'%s'" (dict .resource (default 1000 .capacity) | toJson)) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}


{{/* The head pod's port serving /metrics: "http" when the HTTP API is on, else "metrics". */}}
{{- define "baton.metricsPortName" -}}
{{- if gt (int .Values.serve.httpPort) 0 -}}http{{- else -}}metrics{{- end -}}
{{- end -}}

{{- define "baton.metricsPort" -}}
{{- if gt (int .Values.serve.httpPort) 0 -}}{{ int .Values.serve.httpPort }}{{- else -}}{{ int .Values.metrics.port }}{{- end -}}
{{- end -}}

{{/* Prometheus' conventional scrape annotations (pod and Service). */}}
{{- define "baton.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include "baton.metricsPort" . | quote }}
prometheus.io/path: /metrics
{{- end -}}

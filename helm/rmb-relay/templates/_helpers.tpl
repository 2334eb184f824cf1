{{/*
Names, labels and derived numbers shared by the templates.
*/}}

{{- define "rmb-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, plus the chart name unless the release name already contains it.
*/}}
{{- define "rmb-relay.fullname" -}}
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

{{- define "rmb-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rmb-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rmb-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rmb-relay.labels" -}}
helm.sh/chart: {{ include "rmb-relay.chart" . }}
{{ include "rmb-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: relay
app.kubernetes.io/part-of: rmb
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "rmb-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rmb-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rmb-relay.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Whether a Redis URL reaches the pods (chart Secret or existing Secret). */}}
{{- define "rmb-relay.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/* Whether an identity key reaches the pods. */}}
{{- define "rmb-relay.identityEnabled" -}}
{{- if or .Values.identity.key .Values.identity.existingSecret }}true{{ end }}
{{- end }}

{{/* Whether the twin directory is a twins file (otherwise tfchain, config.substrate). */}}
{{- define "rmb-relay.twinsEnabled" -}}
{{- if or .Values.twins.entries .Values.twins.existingConfigMap }}true{{ end }}
{{- end }}

{{/* The relay domains as a JSON list: config.domains plus the original chart's RMB_DOMAIN
(space or comma separated). */}}
{{- define "rmb-relay.domains" -}}
{{- $domains := .Values.config.domains | default list }}
{{- with .Values.config.RMB_DOMAIN }}
{{- range (splitList " " (replace "," " " .)) }}
{{- if . }}{{ $domains = append $domains . }}{{ end }}
{{- end }}
{{- end }}
{{- $domains | uniq | toJson }}
{{- end }}

{{/* The tfchain endpoints as a JSON list: the original chart's SUBSTRATE_URL, or config.substrate. */}}
{{- define "rmb-relay.substrate" -}}
{{- if .Values.config.SUBSTRATE_URL }}
{{- list .Values.config.SUBSTRATE_URL | toJson }}
{{- else }}
{{- .Values.config.substrate | toJson }}
{{- end }}
{{- end }}

{{/* Whether the chart creates its own Secret (something secret given inline). */}}
{{- define "rmb-relay.createSecret" -}}
{{- if or (and .Values.redis.url (not .Values.redis.existingSecret)) (and .Values.identity.key (not .Values.identity.existingSecret)) }}true{{ end }}
{{- end }}

{{- define "rmb-relay.secretName" -}}
{{- printf "%s-secret" (include "rmb-relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rmb-relay.configMapName" -}}
{{- printf "%s-config" (include "rmb-relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rmb-relay.twinsConfigMapName" -}}
{{- if .Values.twins.existingConfigMap }}
{{- .Values.twins.existingConfigMap }}
{{- else }}
{{- printf "%s-twins" (include "rmb-relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Where the pod mounts things. */}}
{{- define "rmb-relay.configPath" -}}/etc/rmb/config/relay.toml{{- end }}
{{- define "rmb-relay.twinsPath" -}}/etc/rmb/twins/twins.yaml{{- end }}
{{- define "rmb-relay.identityDir" -}}/etc/rmb/identity{{- end }}

{{/*
Termination grace period. After SIGTERM the relay closes its sessions paced over
config.drainSeconds, gives each closing session up to 5 s to flush and be confirmed, then waits up
to 10 s for the remaining connections before shutting its backplane down (relay/src/lib.rs).
The kubelet counts the preStop pause inside the same grace period, so:
  preStop pause + drain window + 5 s flush + 10 s connection wait + extra margin.
*/}}
{{- define "rmb-relay.drainFlushSeconds" -}}5{{- end }}
{{- define "rmb-relay.drainConnectionWaitSeconds" -}}10{{- end }}
{{- define "rmb-relay.terminationGracePeriodSeconds" -}}
{{- $flush := include "rmb-relay.drainFlushSeconds" . | int }}
{{- $wait := include "rmb-relay.drainConnectionWaitSeconds" . | int }}
{{- $drain := .Values.config.drainSeconds | int }}
{{- $preStop := .Values.termination.preStopSleepSeconds | int }}
{{- $extra := .Values.termination.extraGraceSeconds | int }}
{{- add $preStop $drain $flush $wait $extra }}
{{- end }}

{{/*
Label matchers for this release's series in alert rules: prometheus-operator's ServiceMonitor
sets `job` to the Service name.
*/}}
{{- define "rmb-relay.alertSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q, namespace=%q" (include "rmb-relay.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
Refuse settings that would deploy a broken relay.
*/}}
{{- define "rmb-relay.validate" -}}
{{- if and (not (include "rmb-relay.redisEnabled" .)) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "rmb-relay: more than one pod needs Redis (set redis.url or redis.existingSecret): with the in-memory backplane, pods cannot reach each other's sessions or mail" }}
{{- end }}
{{- if le (int .Values.config.idleTimeout) (int .Values.config.pingInterval) }}
{{- fail "rmb-relay: config.idleTimeout must be longer than config.pingInterval" }}
{{- end }}
{{- if and .Values.ingress.enabled .Values.ingress.nginxTimeouts (le (int .Values.ingress.timeoutSeconds) (int .Values.config.idleTimeout)) }}
{{- fail "rmb-relay: ingress.timeoutSeconds must exceed config.idleTimeout, or the proxy cuts idle sessions first" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "rmb-relay: autoscaling.minReplicas is above autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/* Names, labels and the derived settings every template shares. */}}

{{- define "llmconn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmconn.fullname" -}}
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

{{- define "llmconn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmconn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmconn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llmconn.labels" -}}
helm.sh/chart: {{ include "llmconn.chart" . }}
{{ include "llmconn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: llmconn
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "llmconn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmconn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmconn.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when the operator runs with Kopf peering: asked for, or needed by replicas > 1. */}}
{{- define "llmconn.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "llmconn.peeringName" -}}
{{- default (include "llmconn.fullname" .) .Values.peering.name }}
{{- end }}

{{/* "true" in sharded mode (sharding.shards > 1): a StatefulSet instead of the Deployment. */}}
{{- define "llmconn.sharded" -}}
{{- if gt (int .Values.sharding.shards) 1 }}true{{ end }}
{{- end }}

{{/* The peering objects the replicas meet in, one per shard as the operator names them
(llmconn.config.Config.peering_name: <peering>-shard-<i>). A YAML list. */}}
{{- define "llmconn.peeringNames" -}}
{{- $name := include "llmconn.peeringName" . }}
{{- if include "llmconn.sharded" . }}
{{- range $i := until (int .Values.sharding.shards) }}
- {{ printf "%s-shard-%d" $name $i }}
{{- end }}
{{- else }}
- {{ $name }}
{{- end }}
{{- end }}

{{/* "true" in cluster-wide mode (no namespaces listed). */}}
{{- define "llmconn.clusterwide" -}}
{{- if not .Values.watch.namespaces }}true{{ end }}
{{- end }}

{{/* The verbs the operator uses, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "llmconn.rules" -}}
# Watch connections and write their status (one PATCH per validation); nothing else on them.
- apiGroups: ["llmconn.dev"]
  resources: ["llmconnections"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["llmconn.dev"]
  resources: ["llmconnections/status"]
  verbs: ["patch"]
# Read the Secrets that connections reference: watched for key rotation, read directly
# before one is declared missing.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Events on transitions only.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.identity.enabled }}
# spec.identity: mint short-lived tokens for the connections' ServiceAccounts (TokenRequest).
# Nothing else on ServiceAccounts: not even reading them.
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
{{- end }}

{{/* The addresses the operator always refuses (llmconn.egress.ALWAYS_DENIED; a test keeps the
two equal): the NetworkPolicy excepts them from provider traffic. A YAML list. */}}
{{- define "llmconn.alwaysDenied" -}}
- 0.0.0.0/8
- 169.254.0.0/16
- 100.100.100.200/32
- 168.63.129.16/32
- 192.0.0.192/32
- ::/128
- fe80::/10
- fd00:ec2::254/128
- fd00:ec2::23/128
- fd20:ce::254/128
- fd00:42::42/128
{{- end }}

{{/* The private networks egress.denyPrivateNetworks refuses. A YAML list. */}}
{{- define "llmconn.privateNetworks" -}}
- 10.0.0.0/8
- 172.16.0.0/12
- 192.168.0.0/16
- 100.64.0.0/10
- fc00::/7
- fec0::/10
{{- end }}

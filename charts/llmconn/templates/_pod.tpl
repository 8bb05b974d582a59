{{/* The operator pod, shared by the Deployment and the sharded StatefulSet. */}}
{{- define "llmconn.podTemplate" -}}
metadata:
  labels:
    {{- include "llmconn.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "llmconn.serviceAccountName" . }}
  automountServiceAccountToken: true
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: operator
      image: {{ include "llmconn.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        {{- if include "llmconn.clusterwide" . }}
        - --all-namespaces
        {{- else }}
        {{- range .Values.watch.namespaces }}
        - --namespace={{ . }}
        {{- end }}
        {{- end }}
        {{- with .Values.watch.secretLabelSelector }}
        - {{ printf "--secret-label-selector=%s" . | quote }}
        {{- end }}
        - --concurrency={{ .Values.config.concurrency }}
        {{- if .Values.config.namespaceConcurrency }}
        - --namespace-concurrency={{ .Values.config.namespaceConcurrency }}
        {{- end }}
        - --default-interval={{ .Values.config.defaultInterval }}
        - --default-timeout={{ .Values.config.defaultTimeout }}
        - --default-failure-threshold={{ .Values.config.defaultFailureThreshold }}
        {{- if .Values.config.noInference }}
        - --no-inference
        {{- else }}
        - --inference-min-interval={{ .Values.config.inferenceMinInterval }}
        {{- end }}
        - --missing-secret-grace={{ .Values.config.missingSecretGrace }}
        - --min-interval={{ .Values.config.minInterval }}
        - --namespace-write-rate={{ .Values.config.namespaceWriteRate }}
        - --namespace-write-burst={{ .Values.config.namespaceWriteBurst }}
        {{- if .Values.egress.denyLoopback }}
        - --egress-deny=127.0.0.0/8
        - --egress-deny=::1/128
        {{- end }}
        {{- if .Values.egress.denyPrivateNetworks }}
        {{- range include "llmconn.privateNetworks" . | fromYamlArray }}
        - --egress-deny={{ . }}
        {{- end }}
        {{- end }}
        {{- range .Values.egress.deny }}
        - {{ printf "--egress-deny=%s" . | quote }}
        {{- end }}
        {{- range .Values.egress.allow }}
        - {{ printf "--egress-allow=%s" . | quote }}
        {{- end }}
        - --metrics-port={{ if .Values.metrics.enabled }}{{ .Values.metrics.port }}{{ else }}0{{ end }}
        - --health-port={{ .Values.health.port }}
        {{- if eq .Values.config.listenAddress "podIP" }}
        - --listen-address=$(POD_IP)
        {{- else }}
        - {{ printf "--listen-address=%s" .Values.config.listenAddress | quote }}
        {{- end }}
        {{- if include "llmconn.peering" . }}
        - --peering={{ include "llmconn.peeringName" . }}
        {{- end }}
        {{- if include "llmconn.sharded" . }}
        # The shard is the pod's ordinal (modulo the count): see --shard-index.
        - --shard-count={{ .Values.sharding.shards }}
        - --shard-index=pod-ordinal
        {{- end }}
        {{- with .Values.identity.awsStsEndpoint }}
        - {{ printf "--aws-sts-endpoint=%s" . | quote }}
        {{- end }}
        {{- with .Values.identity.azureAuthorityHost }}
        - {{ printf "--azure-authority-host=%s" . | quote }}
        {{- end }}
        {{- with .Values.identity.gcpStsEndpoint }}
        - {{ printf "--gcp-sts-endpoint=%s" . | quote }}
        {{- end }}
        {{- with .Values.identity.gcpIamCredentialsEndpoint }}
        - {{ printf "--gcp-iam-credentials-endpoint=%s" . | quote }}
        {{- end }}
        - --log-level={{ .Values.config.logLevel }}
        - --log-format={{ .Values.config.logFormat }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        # The pod's name: Kopf's identity in the peering object, and the shard's ordinal.
        - name: POD_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- if eq .Values.config.listenAddress "podIP" }}
        # The address the metrics and health ports listen on (--listen-address).
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        {{- end }}
        - name: PYTHONDONTWRITEBYTECODE
          value: "1"
        - name: HOME
          value: /tmp
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        {{- if .Values.metrics.enabled }}
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
        {{- end }}
        - name: health
          containerPort: {{ .Values.health.port }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: health
        {{- toYaml .Values.health.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /healthz
          port: health
        {{- toYaml .Values.health.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

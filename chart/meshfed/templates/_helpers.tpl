{{/* Labels every object carries. */}}
{{- define "meshfed.labels" -}}
app.kubernetes.io/part-of: meshfed
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The image every meshfed container runs. */}}
{{- define "meshfed.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* A cluster-scoped object's name: one per release namespace, so two control planes in two
namespaces never share (or fight over) a ClusterRole. Call with (list . "component"). */}}
{{- define "meshfed.clusterName" -}}
{{- $root := index . 0 -}}
meshfed-{{ index . 1 }}-{{ $root.Release.Namespace }}
{{- end -}}

{{/* The pod-level settings both Deployments share: non-root, no privilege, read-only root. */}}
{{- define "meshfed.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "meshfed.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end -}}

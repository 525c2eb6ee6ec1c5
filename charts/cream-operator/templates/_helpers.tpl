{{/* Names, labels and images shared by every template. */}}

{{- define "cream-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cream-operator.fullname" -}}
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

{{- define "cream-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cream-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cream-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cream-operator.labels" -}}
helm.sh/chart: {{ include "cream-operator.chart" . }}
{{ include "cream-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cream-operator
{{- end }}

{{- define "cream-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cream-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given; the tag defaults to appVersion. */}}
{{- define "cream-operator.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end }}

{{- define "cream-operator.image" -}}
{{- include "cream-operator.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "cream-operator.stageImage" -}}
{{- include "cream-operator.imageRef" (list .Values.stages.image .) }}
{{- end }}

{{/* "true" when the operator watches every namespace (no watchNamespaces given). */}}
{{- define "cream-operator.clusterWide" -}}
{{- if .Values.watchNamespaces }}false{{ else }}true{{ end }}
{{- end }}

{{/* The host the helm test Pod reaches the operator on: the Service's cluster DNS name. */}}
{{- define "cream-operator.serviceHost" -}}
{{- default (printf "%s.%s.svc" (include "cream-operator.fullname" .) .Release.Namespace) .Values.tests.host }}
{{- end }}

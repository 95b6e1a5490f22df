{{/* The release's objects are named after it: `gost-operator` for a release of that name. */}}
{{- define "gost-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gost-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gost-operator.labels" -}}
{{ include "gost-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gost-rs
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "gost-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gost-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: set it when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gost-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "gost-operator.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) -}}
{{- end -}}

{{/*
checkov's skip annotations for one object: `checkov.io/skipN: ID=reason`, from checkovSkips and extraCheckovSkips.
Call with (dict "root" $ "object" "deployment"); renders nothing when no skip applies.
*/}}
{{- define "gost-operator.checkovSkips" -}}
{{- $n := 0 -}}
{{- range (concat .root.Values.checkovSkips .root.Values.extraCheckovSkips) -}}
{{- if has $.object .objects }}
{{- $n = add1 $n }}
checkov.io/skip{{ $n }}: {{ printf "%s=%s" .id (.reason | trim) | quote }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Object names, all from namePrefix. */}}
{{- define "storm.prefix" -}}{{ required "namePrefix must not be empty" .Values.namePrefix }}{{- end }}
{{- define "storm.webhook" -}}{{ include "storm.prefix" . }}-webhook{{- end }}
{{- define "storm.controller" -}}{{ include "storm.prefix" . }}-controller{{- end }}
{{- define "storm.rollouts" -}}{{ include "storm.prefix" . }}-rollouts{{- end }}
{{- define "storm.tlsSecret" -}}{{ include "storm.webhook" . }}-tls{{- end }}

{{/* The namespace the controller watches in namespace scope. */}}
{{- define "storm.watchNamespace" -}}{{ .Values.rbac.watchNamespace | default .Release.Namespace }}{{- end }}

{{/* The controller's ServiceAccount as a user name. */}}
{{- define "storm.controllerUser" -}}system:serviceaccount:{{ .Release.Namespace }}:{{ include "storm.controller" . }}{{- end }}
{{- define "storm.webhookUser" -}}system:serviceaccount:{{ .Release.Namespace }}:{{ include "storm.webhook" . }}{{- end }}

{{/* Labels Helm users expect on every object (app.kubernetes.io/name is set per object). */}}
{{- define "storm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: storm-rollouts
{{- end }}

{{- define "storm.image" -}}
{{- $image := index .root.Values.images .component -}}
{{ $image.repository }}:{{ $image.tag | default .root.Chart.AppVersion }}
{{- end }}

{{- define "storm.validate" -}}
{{- if not (has .Values.certificates.mode (list "selfManaged" "certManager" "manual")) -}}
{{- fail (printf "certificates.mode: Unsupported value: %q: supported values: \"selfManaged\", \"certManager\", \"manual\"" .Values.certificates.mode) -}}
{{- end -}}
{{- if and (eq .Values.certificates.mode "manual") (not .Values.certificates.caBundle) -}}
{{- fail "certificates.caBundle: Required value: manual mode needs the PEM CA your Secret's certificate chains to (or use certificates.mode selfManaged or certManager)" -}}
{{- end -}}
{{- if not (has .Values.rbac.scope (list "cluster" "namespace")) -}}
{{- fail (printf "rbac.scope: Unsupported value: %q: supported values: \"cluster\", \"namespace\"" .Values.rbac.scope) -}}
{{- end -}}
{{- end }}

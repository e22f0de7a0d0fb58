{{/* Names and labels shared by every template. */}}
{{- define "crucible.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "crucible.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: crucible
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "crucible.selectorLabels" -}}
app.kubernetes.io/name: crucible
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "crucible.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "crucible.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "crucible.reportsService" -}}
{{- printf "%s-reports" (include "crucible.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret of the report endpoint's certificate, the chart's or cert-manager's. */}}
{{- define "crucible.reportsSecret" -}}
{{- printf "%s-reports-tls" (include "crucible.fullname" .) -}}
{{- end -}}

{{- define "crucible.workloadImage" -}}
{{- $ctx := index . 0 -}}{{- $name := index . 1 -}}{{- $override := index . 2 -}}
{{- if $override -}}{{ $override }}{{- else -}}
{{- printf "%s/crucible-%s:%s" $ctx.Values.workloads.registry $name (default $ctx.Chart.AppVersion $ctx.Values.workloads.tag) -}}
{{- end -}}
{{- end -}}

{{/* The operator's permissions: its own kinds, the children it creates, nothing more.
     No Secrets: workloads receive them through secretKeyRef, resolved by the kubelet. */}}
{{- define "crucible.rules" -}}
- apiGroups: [crucible.dev]
  resources: [syntheticdatasets, modelmerges, ragindexes, experiments, modelservings]
  verbs: [get, list, watch, patch]
# An Experiment's children are FineTuneJobs and EvalRuns.
- apiGroups: [crucible.dev]
  resources: [finetunejobs, evalruns]
  verbs: [get, list, watch, patch, create]
- apiGroups: [crucible.dev]
  resources:
    - syntheticdatasets/status
    - modelmerges/status
    - finetunejobs/status
    - ragindexes/status
    - evalruns/status
    - experiments/status
    - modelservings/status
  verbs: [get, patch]
# Children are watched (list, watch): their changes, not polling, drive the reconciles.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [apps]
  resources: [deployments]
  # update: a ModelServing promotes a new model by replacing its Deployment's spec.
  verbs: [get, list, watch, create, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps]
  # watch: a dataset or documents ConfigMap created after its run starts the run; create:
  # the task of a run too large for its pod's annotation.
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  # create: Events on the runs; list/watch: the kubelet's FailedMount events on their pods.
  verbs: [create, list, watch]
{{- if .Values.kserve.enabled }}
# ModelServing with runtime KServe: its LLMInferenceService.
- apiGroups: [serving.kserve.io]
  resources: [llminferenceservices]
  verbs: [get, list, watch, create, update, delete]
{{- end }}
{{- if .Values.jobset.enabled }}
# FineTuneJob with runtime JobSet: its JobSet.
- apiGroups: [jobset.x-k8s.io]
  resources: [jobsets]
  verbs: [get, create, delete]
{{- end }}
{{- if .Values.kubeflowTrainer.enabled }}
# FineTuneJob with runtime KubeflowTrainer: its TrainJob.
- apiGroups: [trainer.kubeflow.org]
  resources: [trainjobs]
  verbs: [get, create, delete]
{{- end }}
{{- end -}}

{{/* Cluster-scoped rights in either mode: kopf follows the namespaces it serves and the
     CRDs of the resources it handles; the report endpoint reviews the workloads' tokens. */}}
{{- define "crucible.clusterRules" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
{{- end -}}

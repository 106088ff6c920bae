// Pins the third-party projects whose published CRDs the e2e suites install (never built:
// thirdparty-crds.sh only downloads these module zips and copies CRD YAML out of them).
module storm-rollouts/tests/controlplane/thirdparty

go 1.26.0

require (
	// Istio VirtualService and DestinationRule: kubernetes/customresourcedefinitions.gen.yaml.
	istio.io/api v1.32.0
	// SMI TrafficSplit in apiextensions.k8s.io/v1: cmd/osm-bootstrap/crds/smi_traffic_split.yaml
	// (the SMI SDK's own crds/split.yaml is apiextensions.k8s.io/v1beta1 up to its last
	// release, v0.5.0, which Kubernetes >= 1.22 no longer serves).
	github.com/openservicemesh/osm v1.2.4
	// Gateway API HTTPRoute (standard channel): config/crd/standard/gateway.networking.k8s.io_httproutes.yaml.
	// v1.7.0 needs a newer Go than the machines have.
	sigs.k8s.io/gateway-api v1.6.3
	// Coscheduling PodGroup (gang scheduling of RoleSets and PodSets):
	// config/crd/bases/scheduling.x-k8s.io_podgroups.yaml. Volcano's and Godel's PodGroup CRDs
	// live in modules the Go module proxy does not serve (volcano.sh/volcano answers 403).
	sigs.k8s.io/scheduler-plugins v0.31.8
)

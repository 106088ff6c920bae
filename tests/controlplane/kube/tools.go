//go:build tools

// Package tools keeps the Kubernetes control-plane main packages in go.mod/go.sum
// so `go build -mod=readonly` can build them from the module proxy.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)

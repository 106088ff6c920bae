//go:build tools

// Package tools keeps the Argo Rollouts controller main package in go.mod/go.sum so
// `go build -mod=readonly` can build it from the module proxy.
package tools

import (
	_ "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"
)

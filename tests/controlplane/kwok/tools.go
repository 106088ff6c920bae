//go:build tools

// Package tools keeps kwok's main package in go.mod/go.sum so
// `go build -mod=readonly` can build it from the module proxy.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)

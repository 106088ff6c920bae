//go:build tools

// Package tools keeps etcd's server main package in go.mod/go.sum so
// `go build -mod=readonly` can build it from the module proxy.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)

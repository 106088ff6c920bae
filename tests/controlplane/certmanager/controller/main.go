// Command controller runs cert-manager's own control loops, unchanged, out of cluster against
// the local control plane: the issuers and certificate controllers that turn Issuers and
// Certificates into Secrets (self-signed and CA issuers, the approver, and the six certificates-*
// controllers: trigger, key manager, request manager, issuing, readiness, revision manager).
//
// cert-manager's own command (cmd/controller) is a separate Go module that the module proxy does
// not serve, so this is the smallest main around the public packages of
// github.com/cert-manager/cert-manager that still runs them as cert-manager does: one
// ContextFactory, every enabled controller constructed from controller.Known(), the shared
// informer factories started after them. Left out, because the suites do not need them: ACME,
// Vault and Venafi issuers, the ingress and gateway shims, the metrics, healthz and pprof
// servers, and leader election (a suite runs one instance scoped to its own namespace; a lease
// shared between suites would leave all but one idle).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	"github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Each controller registers itself with controller.Known() when imported.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// The issuer kinds the issuers controllers can set up.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// clusterScoped are the controllers that act on cluster-scoped objects: never run when the
// controller is limited to one namespace (cert-manager's own command drops them the same way).
var clusterScoped = []string{"clusterissuers"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cert-manager controller:", err)
		os.Exit(1)
	}
}

func run() error {
	klog.InitFlags(nil)
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	namespace := flag.String("namespace", "", "only act on objects in this namespace (all namespaces when empty)")
	clusterResourceNamespace := flag.String("cluster-resource-namespace", "kube-system",
		"namespace of the Secrets that ClusterIssuers refer to")
	workers := flag.Int("workers", 5, "workers per controller")
	flag.Parse()

	logf.InitLogs()
	defer logf.FlushLogs()

	stopped, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := logf.FromContext(stopped, "controller")

	factory, err := controller.NewContextFactory(stopped, controller.ContextOptions{
		Kubeconfig: *kubeconfig,
		// cert-manager's defaults (its controller configuration's v1alpha1 defaults).
		KubernetesAPIQPS:   20,
		KubernetesAPIBurst: 50,
		Namespace:          *namespace,
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace: *clusterResourceNamespace,
		},
		CertificateOptions: controller.CertificateOptions{
			CopiedAnnotationPrefixes: []string{
				"*", "-kubectl.kubernetes.io/", "-fluxcd.io/", "-argocd.argoproj.io/",
			},
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}
	base, err := factory.Build()
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}

	names := make([]string, 0, len(controller.Known()))
	for name := range controller.Known() {
		if *namespace != "" && slices.Contains(clusterScoped, name) {
			continue
		}
		names = append(names, name)
	}
	slices.Sort(names)
	log.Info("starting cert-manager controllers", "namespace", *namespace, "controllers", strings.Join(names, ","))

	// One controller failing stops the others, and the process with an error.
	g, ctx := errgroup.WithContext(stopped)
	for _, name := range names {
		ctrl, err := controller.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("constructing controller %s: %w", name, err)
		}
		g.Go(func() error { return ctrl.Run(*workers, ctx) })
	}
	// The controllers registered their informers while being constructed; start them now.
	base.SharedInformerFactory.Start(ctx.Done())
	base.KubeSharedInformerFactory.Start(ctx.Done())
	base.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	err = g.Wait()
	base.HTTP01ResourceMetadataInformersFactory.Shutdown()
	base.KubeSharedInformerFactory.Shutdown()
	base.SharedInformerFactory.Shutdown()
	if err != nil && stopped.Err() == nil {
		return err
	}
	log.Info("control loops exited")
	return nil
}

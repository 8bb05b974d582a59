// Command flux-cel-check prints what Flux's kustomize-controller makes of one object when a
// Kustomization declares healthCheckExprs for its kind: the expressions are read from a
// Kustomization manifest (decoded strictly into Flux's own API type, so a misspelt field
// fails), and the object (JSON on stdin) goes through Flux's CEL status reader, the one
// kustomize-controller polls with. Output: {"status": ..., "message": ..., "error": ...}.
// Built into .local/bin/flux-cel-check.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	kustomizev1 "github.com/fluxcd/kustomize-controller/api/v1"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

type output struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: flux-cel-check KUSTOMIZATION.yaml < object.json")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "flux-cel-check:", err)
		os.Exit(2)
	}
}

func run(kustomization string, in io.Reader, out io.Writer) error {
	manifest, err := os.ReadFile(kustomization)
	if err != nil {
		return err
	}
	var ks kustomizev1.Kustomization
	if err := yaml.UnmarshalStrict(manifest, &ks); err != nil {
		return fmt.Errorf("not a Flux Kustomization: %w", err)
	}
	if ks.APIVersion != kustomizev1.GroupVersion.String() || ks.Kind != kustomizev1.KustomizationKind {
		return fmt.Errorf("not a Flux Kustomization: %s %s", ks.APIVersion, ks.Kind)
	}
	if len(ks.Spec.HealthCheckExprs) == 0 {
		return fmt.Errorf("%s has no spec.healthCheckExprs", kustomization)
	}
	newReader, err := cel.NewStatusReader(ks.Spec.HealthCheckExprs)
	if err != nil {
		return err
	}

	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// UnmarshalJSON keeps integers as int64, as objects read from the API server have them.
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}

	// A status reader needs a cluster only to follow generated resources; custom health
	// checks have none, so neither a REST mapper nor a cluster reader is used.
	res, err := newReader(nil).ReadStatusForObject(context.Background(), nil, &obj)
	if err != nil {
		return err
	}
	result := output{Status: res.Status.String(), Message: res.Message}
	if res.Error != nil {
		result.Error = res.Error.Error()
	}
	return json.NewEncoder(out).Encode(result)
}

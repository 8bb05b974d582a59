// Command kstatus-check prints the status that kstatus (the library Flux, kpt and
// cli-utils use to decide whether a resource is reconciled) computes for one Kubernetes
// resource, read as JSON on stdin. Output: {"status": ..., "message": ..., "conditions": [...]}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type output struct {
	Status     string             `json:"status"`
	Message    string             `json:"message"`
	Conditions []status.Condition `json:"conditions"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check:", err)
		os.Exit(2)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// UnmarshalJSON keeps integers as int64, as kstatus's generation check expects.
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	res, err := status.Compute(&obj)
	if err != nil {
		return fmt.Errorf("computing status: %w", err)
	}
	conditions := res.Conditions
	if conditions == nil {
		conditions = []status.Condition{}
	}
	return json.NewEncoder(out).Encode(output{
		Status:     res.Status.String(),
		Message:    res.Message,
		Conditions: conditions,
	})
}

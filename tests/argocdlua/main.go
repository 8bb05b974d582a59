// Command argocd-lua runs Argo CD resource customizations (health checks and resource
// actions) in gopher-lua, the Lua VM Argo CD embeds, set up as Argo CD sets it up for
// scripts from argocd-cm: only the base, package and table libraries, plus a safe "os" with
// just time and date, and a one-second budget. Built into .local/bin/argocd-lua.
//
//	argocd-lua test DIR          run DIR's health_test.yaml and action_test.yaml files the
//	                             way Argo CD's own util/lua tests do; one JSON result per case
//	argocd-lua health SCRIPT     the health status of the object (JSON) on stdin
//	argocd-lua discovery SCRIPT  the actions a discovery script offers for the object on stdin
//	argocd-lua action SCRIPT     the object an action script returns for the object on stdin
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua test DIR | health|discovery|action SCRIPT < object.json")
		os.Exit(2)
	}
	command, arg := os.Args[1], os.Args[2]
	var err error
	if command == "test" {
		var failed bool
		failed, err = runTests(arg, os.Stdout)
		if err == nil && failed {
			os.Exit(1)
		}
	} else {
		err = runScript(command, arg, os.Stdin, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua:", err)
		os.Exit(2)
	}
}

func runScript(command, scriptPath string, in io.Reader, out io.Writer) error {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := json.Unmarshal(data, &obj); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	var result any
	switch command {
	case "health":
		result, err = health(obj, string(script))
	case "discovery":
		result, err = discovery(obj, string(script))
	case "action":
		result, err = action(obj, string(script))
	default:
		return fmt.Errorf("unknown command %q", command)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(result)
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

// Budget Argo CD gives one script run.
const scriptTimeout = time.Second

// HealthStatus is what a health script returns, as Argo CD reads it.
type HealthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// ResourceAction is one entry of what a discovery script returns, as Argo CD reads it.
type ResourceAction struct {
	Name        string `json:"name"`
	Disabled    bool   `json:"disabled,omitempty"`
	IconClass   string `json:"iconClass,omitempty"`
	DisplayName string `json:"displayName,omitempty"`
}

var healthStatuses = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

// run executes script with the global obj set, in a VM restricted as Argo CD restricts the
// scripts it reads from argocd-cm (useOpenLibs false, the default), and returns the value
// the script returned as JSON.
func run(obj map[string]any, script string) ([]byte, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for name, open := range map[string]lua.LGFunction{
		lua.LoadLibName: lua.OpenPackage,
		lua.BaseLibName: lua.OpenBase,
		lua.TabLibName:  lua.OpenTable,
		lua.OsLibName:   openSafeOs,
	} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(open), NRet: 0, Protect: true}, lua.LString(name)); err != nil {
			return nil, err
		}
	}
	// So that `local os = require("os")` finds the restricted library.
	L.PreloadModule(lua.OsLibName, loadSafeOs)

	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return nil, err
	}
	returned := L.Get(-1)
	if returned.Type() != lua.LTTable {
		return nil, fmt.Errorf("the script returned a %s, not a table", returned.Type())
	}
	return luajson.Encode(returned)
}

// toLua converts decoded JSON into Lua values: lists become sequences, maps tables.
func toLua(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		t := L.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(L, item))
		}
		return t
	case map[string]any:
		t := L.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetString(key, toLua(L, item))
		}
		return t
	}
	return lua.LNil
}

func health(obj map[string]any, script string) (*HealthStatus, error) {
	out, err := run(obj, script)
	if err != nil {
		return nil, err
	}
	var hs HealthStatus
	if err := json.Unmarshal(out, &hs); err != nil {
		return nil, err
	}
	if !healthStatuses[hs.Status] {
		// What Argo CD shows for a status it does not know.
		return &HealthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return &hs, nil
}

func discovery(obj map[string]any, script string) ([]ResourceAction, error) {
	out, err := run(obj, script)
	if err != nil {
		return nil, err
	}
	actions := []ResourceAction{}
	// An empty Lua table encodes as [] : no actions.
	if string(out) == "[]" {
		return actions, nil
	}
	var byName map[string]json.RawMessage
	if err := json.Unmarshal(out, &byName); err != nil {
		return nil, err
	}
	for name, raw := range byName {
		a := ResourceAction{Name: name}
		// {} in Lua is [] in JSON: an action with no settings.
		if !strings.HasPrefix(strings.TrimSpace(string(raw)), "[") {
			if err := json.Unmarshal(raw, &a); err != nil {
				return nil, fmt.Errorf("action %s: %w", name, err)
			}
			a.Name = name
		}
		actions = append(actions, a)
	}
	return actions, nil
}

// action runs an action script that returns the changed object (a patch, in Argo CD's
// terms) and returns that object as Argo CD would apply it.
func action(obj map[string]any, script string) (map[string]any, error) {
	out, err := run(obj, script)
	if err != nil {
		return nil, err
	}
	var changed map[string]any
	if err := json.Unmarshal(out, &changed); err != nil {
		return nil, fmt.Errorf("the action did not return an object: %w", err)
	}
	return restoreEmptyMaps(changed, obj).(map[string]any), nil
}

// restoreEmptyMaps undoes a Lua artefact the way Argo CD does: an empty table has no type,
// so a map that was empty in the input comes back as an empty list; give it back its type.
func restoreEmptyMaps(changed, original any) any {
	switch c := changed.(type) {
	case map[string]any:
		o, ok := original.(map[string]any)
		if !ok {
			return c
		}
		for key, value := range c {
			if before, ok := o[key]; ok {
				c[key] = restoreEmptyMaps(value, before)
			}
		}
		return c
	case []any:
		if o, ok := original.(map[string]any); ok && len(c) == 0 {
			return o
		}
		if o, ok := original.([]any); ok {
			for i := range c {
				if i < len(o) {
					c[i] = restoreEmptyMaps(c[i], o[i])
				}
			}
		}
		return c
	}
	return changed
}

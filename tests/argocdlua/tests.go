package main

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"time"

	"sigs.k8s.io/yaml"
)

// The test files of Argo CD's resource_customizations layout.
type healthTests struct {
	Tests []struct {
		InputPath    string       `json:"inputPath"`
		HealthStatus HealthStatus `json:"healthStatus"`
	} `json:"tests"`
}

type actionTests struct {
	DiscoveryTests []struct {
		InputPath string           `json:"inputPath"`
		Result    []ResourceAction `json:"result"`
	} `json:"discoveryTests"`
	ActionTests []struct {
		Action             string `json:"action"`
		InputPath          string `json:"inputPath"`
		ExpectedOutputPath string `json:"expectedOutputPath"`
	} `json:"actionTests"`
}

// One test case's outcome, printed as a line of JSON.
type caseResult struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Got   any    `json:"got,omitempty"`
	Want  any    `json:"want,omitempty"`
	Error string `json:"error,omitempty"`
}

// Annotations an action sets to the current time, and the value the expected outputs hold
// instead (Argo CD's tests normalise such timestamps the same way).
var timestampAnnotations = []string{"llmconn.dev/validate-requested-at"}

const zeroTime = "0001-01-01T00:00:00Z"

var utcSeconds = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)

func runTests(root string, out io.Writer) (failed bool, err error) {
	var results []caseResult
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		rel, _ := filepath.Rel(root, dir)
		switch d.Name() {
		case "health.lua":
			cases, err := runHealthTests(dir, rel)
			results = append(results, cases...)
			return err
		case "action_test.yaml":
			cases, err := runActionTests(dir, rel)
			results = append(results, cases...)
			return err
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if len(results) == 0 {
		return false, fmt.Errorf("no health_test.yaml or action_test.yaml under %s", root)
	}
	sort.Slice(results, func(i, j int) bool { return results[i].Name < results[j].Name })
	enc := json.NewEncoder(out)
	for _, r := range results {
		failed = failed || !r.OK
		if r.OK {
			r.Got, r.Want = nil, nil // what passed needs no showing
		}
		if err := enc.Encode(r); err != nil {
			return failed, err
		}
	}
	return failed, nil
}

// caseName is "<group>/<kind>/<what>/<input path as the test file gives it>".
func caseName(kind, what, input string) string {
	return filepath.ToSlash(kind) + "/" + what + "/" + input
}

func readYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readScript(path string) (string, error) {
	data, err := os.ReadFile(path)
	return string(data), err
}

func runHealthTests(dir, rel string) ([]caseResult, error) {
	// Every health.lua must come with its tests, as Argo CD requires.
	var tests healthTests
	if err := readYAML(filepath.Join(dir, "health_test.yaml"), &tests); err != nil {
		return nil, err
	}
	script, err := readScript(filepath.Join(dir, "health.lua"))
	if err != nil {
		return nil, err
	}
	var results []caseResult
	for _, tc := range tests.Tests {
		r := caseResult{Name: caseName(rel, "health", tc.InputPath), Want: tc.HealthStatus}
		var obj map[string]any
		if err := readYAML(filepath.Join(dir, tc.InputPath), &obj); err != nil {
			return nil, err
		}
		got, err := health(obj, script)
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Got, r.OK = got, *got == tc.HealthStatus
		}
		results = append(results, r)
	}
	return results, nil
}

func runActionTests(dir, rel string) ([]caseResult, error) {
	var tests actionTests
	if err := readYAML(filepath.Join(dir, "action_test.yaml"), &tests); err != nil {
		return nil, err
	}
	kind := filepath.Dir(rel) // action_test.yaml lives in <group>/<kind>/actions
	var results []caseResult
	if len(tests.DiscoveryTests) > 0 {
		script, err := readScript(filepath.Join(dir, "discovery.lua"))
		if err != nil {
			return nil, err
		}
		for _, tc := range tests.DiscoveryTests {
			r := caseResult{Name: caseName(kind, "discovery", tc.InputPath), Want: tc.Result}
			var obj map[string]any
			if err := readYAML(filepath.Join(dir, tc.InputPath), &obj); err != nil {
				return nil, err
			}
			got, err := discovery(obj, script)
			if err != nil {
				r.Error = err.Error()
			} else {
				// Argo CD checks that every action offered is an expected one; the sets must
				// also be equal here, so that an action cannot silently go missing.
				sort.Slice(got, func(i, j int) bool { return got[i].Name < got[j].Name })
				want := append([]ResourceAction(nil), tc.Result...)
				sort.Slice(want, func(i, j int) bool { return want[i].Name < want[j].Name })
				r.Got, r.OK = got, reflect.DeepEqual(got, want)
			}
			results = append(results, r)
		}
	}
	for _, tc := range tests.ActionTests {
		r := caseResult{Name: caseName(kind, "actions/"+tc.Action, tc.InputPath)}
		var obj, want map[string]any
		if err := readYAML(filepath.Join(dir, tc.InputPath), &obj); err != nil {
			return nil, err
		}
		if err := readYAML(filepath.Join(dir, tc.ExpectedOutputPath), &want); err != nil {
			return nil, err
		}
		script, err := readScript(filepath.Join(dir, tc.Action, "action.lua"))
		if err != nil {
			return nil, err
		}
		before := time.Now().UTC().Truncate(time.Second)
		got, err := action(obj, script)
		after := time.Now().UTC()
		if err == nil {
			err = normaliseTimestamps(got, before, after)
		}
		if err != nil {
			r.Error = err.Error()
		} else {
			got, want = jsonRoundTrip(got), jsonRoundTrip(want)
			r.Got, r.Want, r.OK = got, want, reflect.DeepEqual(got, want)
		}
		results = append(results, r)
	}
	return results, nil
}

// normaliseTimestamps checks that each timestamp annotation an action set is the time of
// the run, in UTC to the second, and replaces it with the zero time the expected output holds.
func normaliseTimestamps(obj map[string]any, before, after time.Time) error {
	meta, _ := obj["metadata"].(map[string]any)
	annotations, _ := meta["annotations"].(map[string]any)
	for _, key := range timestampAnnotations {
		value, ok := annotations[key].(string)
		if !ok {
			continue
		}
		if !utcSeconds.MatchString(value) {
			return fmt.Errorf("annotation %s is %q, not a UTC time to the second", key, value)
		}
		at, err := time.Parse(time.RFC3339, value)
		if err != nil {
			return fmt.Errorf("annotation %s: %w", key, err)
		}
		if at.Before(before) || at.After(after) {
			return fmt.Errorf("annotation %s is %s, not the time of the run (%s to %s)",
				key, value, before.Format(time.RFC3339), after.Format(time.RFC3339))
		}
		annotations[key] = zeroTime
	}
	return nil
}

// jsonRoundTrip gives both sides the same number types (Lua has only floats).
func jsonRoundTrip(obj map[string]any) map[string]any {
	data, _ := json.Marshal(obj)
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return out
}

package otelmetrics_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEShowsExample: the README's metrics set-up is
// Example_globalMeterProvider's, which the compiler checks. The README's
// own Go blocks are compiled against the library alone, without
// OpenTelemetry, so this one is fenced as "golang", which GitHub
// highlights the same.
func TestREADMEShowsExample(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	ws := regexp.MustCompile(`\s+`)
	norm := func(s string) string { return ws.ReplaceAllString(strings.TrimSpace(s), " ") }
	const start = "func Example_globalMeterProvider() {"
	body := string(example)
	i := strings.Index(body, start)
	if i < 0 {
		t.Fatal("example_test.go has no Example_globalMeterProvider")
	}
	body = body[i+len(start):]
	body = body[:strings.Index(body, "\tdefer")]
	if !strings.Contains(norm(string(readme)), "```golang "+norm(body)+" ```") {
		t.Errorf("README.md does not show Example_globalMeterProvider's set-up in a golang block:\n%s", body)
	}
}

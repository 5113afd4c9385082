package otelmetrics_test

import (
	"testing"

	"github.com/llmdrain/llmdrain/internal/readmetest"
)

// TestREADMEShowsExample: the README's metrics set-up is
// Example_globalMeterProvider's, which the compiler checks. The README's
// own Go blocks are compiled against the library alone, without
// OpenTelemetry, so this one is fenced as "golang", which GitHub
// highlights the same.
func TestREADMEShowsExample(t *testing.T) {
	readmetest.ShowsExample(t, "../README.md", "example_test.go", "Example_globalMeterProvider")
}

package redisquota_test

import (
	"testing"

	"github.com/llmdrain/llmdrain/internal/readmetest"
)

// TestREADMEShowsExample: the README's redisquota set-up is ExampleNew's,
// which the compiler checks (the README's own Go blocks are compiled
// against the library alone, without go-redis, so this one is fenced
// as "golang", which GitHub highlights the same).
func TestREADMEShowsExample(t *testing.T) {
	readmetest.ShowsExample(t, "../README.md", "example_test.go", "ExampleNew")
}

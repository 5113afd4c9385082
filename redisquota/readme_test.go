package redisquota_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEShowsExample: the README's redisquota set-up is ExampleNew's,
// which the compiler checks (the README's own Go blocks are compiled
// against the library alone, without go-redis, so this one is fenced
// as "golang", which GitHub highlights the same).
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
	body := string(example)
	body = body[strings.Index(body, "func ExampleNew() {")+len("func ExampleNew() {"):]
	body = body[:strings.Index(body, "\tdefer")]
	if !strings.Contains(norm(string(readme)), norm(body)) {
		t.Errorf("README.md does not show ExampleNew's set-up:\n%s", body)
	}
}

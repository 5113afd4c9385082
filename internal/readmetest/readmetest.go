// Package readmetest keeps a README's set-up code true when the README
// test of the root module cannot compile it: blocks that use another
// module of this repository (otelmetrics, redisquota) are fenced as
// "golang" and must show the statements of a compiled Example of that
// module, which the compiler checks.
package readmetest

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

var space = regexp.MustCompile(`\s+`)

func norm(s string) string { return space.ReplaceAllString(strings.TrimSpace(s), " ") }

// ShowsExample fails t unless the README at readme has a ```golang block
// that is, but for white space, the body of function example in the file
// exampleFile, up to its first line that starts with "defer" (the
// example's clean-up, which the README leaves to the reader).
func ShowsExample(t testing.TB, readme, exampleFile, example string) {
	t.Helper()
	doc, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	start := "func " + example + "() {"
	body := string(src)
	i := strings.Index(body, start)
	if i < 0 {
		t.Fatalf("%s has no %s", exampleFile, example)
	}
	body = body[i+len(start):]
	if j := strings.Index(body, "\tdefer"); j >= 0 {
		body = body[:j]
	} else {
		body = body[:strings.Index(body, "\n}")]
	}
	if !strings.Contains(norm(string(doc)), "```golang "+norm(body)+" ```") {
		t.Errorf("%s does not show %s's set-up in a golang block:\n%s", readme, example, body)
	}
}

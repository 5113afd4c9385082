package llmdrain

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// snippetPreamble makes a README fragment compile: the imports snippets
// use, each used once so that none is unused, and the variables they take
// as given (ctx, a test's t, a client c and batch tasks) as parameters.
const snippetPreamble = `package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

var (
	_ = context.Background
	_ = fmt.Sprint
	_ = log.Fatal
	_ = http.StatusOK
	_ = os.Getenv
	_ testing.TB
	_ = time.Second
	_ openai.ClientConfig
	_ = llmdrain.New
	_ = llmtest.NewServer
)

func main() {}
`

// ignoredError finds a line that drops an error a reader would copy: a
// blank identifier taking a result, or a server started without looking
// at what it returns.
var ignoredError = regexp.MustCompile(`(^|[\s,(])_\s*(,[^=]*)?:?=[^=]|^\s*go\s+\w+\.(ListenAndServe|Serve)\(`)

// TestREADMEGoBlocks compiles and vets every Go block of the README, in a
// module of its own that uses this one, so that what a reader copies
// builds; and checks that none ignores an error. A block that is a whole
// file (it starts with "package") is built as its own program; any other
// is the body of a function given ctx, t, c and tasks.
func TestREADMEGoBlocks(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a module")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	blocks := goBlocks(string(readme))
	require.GreaterOrEqual(t, len(blocks), 7, "the README's Go blocks")

	dir := t.TempDir()
	repo, err := os.Getwd()
	require.NoError(t, err)
	gomod, err := os.ReadFile("go.mod")
	require.NoError(t, err)
	requires := string(gomod[strings.Index(string(gomod), "require"):])
	write := func(name, content string) {
		t.Helper()
		path := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	}
	write("go.mod", fmt.Sprintf("module readme\n\ngo 1.23.0\n\nrequire github.com/llmdrain/llmdrain v0.0.0\n\n%s\nreplace github.com/llmdrain/llmdrain => %s\n", requires, repo))
	sum, err := os.ReadFile("go.sum")
	require.NoError(t, err)
	write("go.sum", string(sum))

	var fragments strings.Builder
	fragments.WriteString(snippetPreamble)
	for i, b := range blocks {
		for n, line := range strings.Split(b.code, "\n") {
			if ignoredError.MatchString(line) {
				t.Errorf("README.md:%d: the snippet ignores an error: %s", b.line+n+1, strings.TrimSpace(line))
			}
		}
		if strings.HasPrefix(b.code, "package ") {
			write(fmt.Sprintf("program%d/main.go", i), b.code)
			continue
		}
		fmt.Fprintf(&fragments, "\n// README.md:%d\nfunc snippet%d(ctx context.Context, t *testing.T, c *llmdrain.Client, tasks []llmdrain.Task) {\n%s}\n", b.line, i, b.code)
	}
	write("fragments/main.go", fragments.String())

	for _, args := range [][]string{{"build", "-o", os.DevNull, "./..."}, {"vet", "./..."}} {
		cmd := exec.Command(goTool, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("go %s: %v\n%s\nfragments:\n%s", args[0], err, out, numbered(fragments.String()))
		}
	}
}

// goBlock is a fenced Go block of the README and the line it starts on.
type goBlock struct {
	code string
	line int
}

// goBlocks returns the README's ```go blocks.
func goBlocks(md string) []goBlock {
	var (
		blocks []goBlock
		cur    *strings.Builder
		start  int
	)
	for i, line := range strings.Split(md, "\n") {
		switch {
		case cur == nil && strings.TrimSpace(line) == "```go":
			cur, start = &strings.Builder{}, i+1
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, goBlock{code: cur.String(), line: start})
			cur = nil
		case cur != nil:
			cur.WriteString(line)
			cur.WriteByte('\n')
		}
	}
	return blocks
}

func numbered(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(s, "\n") {
		fmt.Fprintf(&b, "%4d %s\n", i+1, l)
	}
	return b.String()
}

module github.com/llmdrain/llmdrain/examples/server

go 1.26.0

require (
	github.com/llmdrain/llmdrain v0.0.0-00010101000000-000000000000
	github.com/sashabaranov/go-openai v1.43.0
	github.com/stretchr/testify v1.12.1
)

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/sync v0.16.0 // indirect
)

replace github.com/llmdrain/llmdrain => ../..

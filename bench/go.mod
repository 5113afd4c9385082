module github.com/llmdrain/llmdrain/bench

go 1.26.0

require (
	github.com/llmdrain/llmdrain v0.0.0-00010101000000-000000000000
	github.com/llmdrain/llmdrain/redisquota v0.0.0-00010101000000-000000000000
	github.com/openai/openai-go/v3 v3.98.0
	github.com/redis/go-redis/v9 v9.17.3
	github.com/sashabaranov/go-openai v1.43.0
)

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/coder/websocket v1.8.15 // indirect
	github.com/dgryski/go-rendezvous v0.0.0-20200823014737-9f7001d12a5f // indirect
	github.com/go-redis/redis_rate/v10 v10.0.1 // indirect
	github.com/tidwall/gjson v1.20.0 // indirect
	github.com/tidwall/match v1.1.1 // indirect
	github.com/tidwall/pretty v1.2.1 // indirect
	github.com/tidwall/sjson v1.2.5 // indirect
	golang.org/x/sync v0.23.0 // indirect
)

replace github.com/llmdrain/llmdrain => ../

replace github.com/llmdrain/llmdrain/redisquota => ../redisquota

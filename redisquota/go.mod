module github.com/llmdrain/llmdrain/redisquota

go 1.23.0

replace github.com/llmdrain/llmdrain => ../

require (
	github.com/go-redis/redis_rate/v10 v10.0.1
	github.com/llmdrain/llmdrain v0.0.0-00010101000000-000000000000
	github.com/redis/go-redis/v9 v9.17.3
	github.com/sashabaranov/go-openai v1.43.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/dgryski/go-rendezvous v0.0.0-20200823014737-9f7001d12a5f // indirect
	golang.org/x/sync v0.16.0 // indirect
)

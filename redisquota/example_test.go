package redisquota_test

import (
	"context"
	"log"
	"log/slog"
	"os"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/redisquota"
	"github.com/redis/go-redis/v9"
)

// Every replica of a service makes its client this way, with the same
// Redis and the same key: together they stay under the key's quota. The
// README shows these lines (TestREADMEShowsExample keeps them the same).
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("REDIS_ADDR")})
	quota, err := redisquota.New(rdb, redisquota.Options{Logger: slog.Default()})
	if err != nil {
		log.Fatal(err)
	}
	c, err := llmdrain.New(llmdrain.Config{MaxConcurrent: 64, Quota: quota})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Shutdown(context.Background())
}

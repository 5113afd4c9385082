package llmdrain

import (
	"context"
	"testing"
	"time"
)

func TestLocalQuotaBothAxesOrNeither(t *testing.T) {
	now := time.Unix(0, 0)
	q := &LocalQuota{now: func() time.Time { return now }}
	ctx := context.Background()
	lim := Limit{Requests: 10, Tokens: 100, Period: time.Second}
	if w, _ := q.Take(ctx, "k", lim, 1, 90); w != 0 {
		t.Fatalf("first draw held %v", w)
	}
	// Requests left, tokens not: nothing drawn.
	if w, _ := q.Take(ctx, "k", lim, 1, 50); w == 0 {
		t.Fatal("token overdraw admitted")
	}
	for i := range 9 {
		if w, _ := q.Take(ctx, "k", lim, 1, 0); w != 0 {
			t.Fatalf("request %d held %v: a refused draw kept its request", i+2, w)
		}
	}
	// Giving back tokens makes room.
	if w, _ := q.Take(ctx, "k", lim, 0, -80); w != 0 {
		t.Fatal("a give-back was held")
	}
	if w, _ := q.Take(ctx, "other", lim, 1, 100); w != 0 {
		t.Fatal("another key's bucket is not separate")
	}
	if w, _ := q.Take(ctx, "k", Limit{Tokens: 100, Period: time.Second}, 5, 80); w != 0 {
		t.Fatalf("tokens given back still held (%v)", w)
	}
}

module github.com/llmdrain/llmdrain/redisquota

go 1.23.0

replace github.com/llmdrain/llmdrain => ../

require go.uber.org/goleak v1.3.0

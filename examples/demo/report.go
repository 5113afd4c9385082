package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// ANSI colours, used only on a terminal.
const (
	bold   = "1"
	red    = "31"
	green  = "32"
	yellow = "33"
	cyan   = "36"
	dim    = "2"
)

// useColor reports whether f is a terminal and NO_COLOR (no-color.org) is
// not set.
func useColor(f *os.File) bool {
	if os.Getenv("NO_COLOR") != "" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// printer writes whole lines, one at a time, from any goroutine.
type printer struct {
	w     io.Writer
	color bool
	start time.Time
	mu    sync.Mutex
}

func newPrinter(w io.Writer, color bool) *printer { return &printer{w: w, color: color} }

func (p *printer) paint(code, s string) string {
	if !p.color || code == "" {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

func (p *printer) line(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

func (p *printer) title(s string) { p.line("%s", p.paint(bold, s)) }

// event prints a line stamped with the time since the burst began.
func (p *printer) event(code, format string, args ...any) {
	p.line("%s  %s", p.stamp(time.Now()), p.paint(code, fmt.Sprintf(format, args...)))
}

func (p *printer) stamp(t time.Time) string {
	return p.paint(dim, fmt.Sprintf("%6.2fs", t.Sub(p.start).Seconds()))
}

// outcome classifies a finished call.
type outcome int

const (
	completed outcome = iota
	refused
	lost
)

// judge says how c ended. Completed means a whole answer came back
// (llmdrain reports a cut stream as an error); offline it must also be
// the answer the fake LLM produces for its prompt. Refused means
// ErrDraining, before any request was sent. Anything else is lost.
func (d *demo) judge(c *call) outcome {
	switch {
	case c.err == nil && (d.sc.online || c.text == llmtest.Reply(c.prompt)):
		return completed
	case errors.Is(c.err, llmdrain.ErrDraining):
		return refused
	}
	return lost
}

// path describes the attempts of a call that needed more than one, or
// that went elsewhere than the primary endpoint.
func (d *demo) path(c *call) (desc string, saw429, failedOver bool) {
	var parts []string
	primaryFailed := false
	for i, a := range c.attempts {
		if a.status == 429 {
			saw429 = true
		}
		if a.endpoint != d.sc.primary && primaryFailed {
			failedOver = true
		}
		if a.endpoint == d.sc.primary && a.status != 200 {
			primaryFailed = true
		}
		if len(c.attempts) > 1 || a.endpoint != d.sc.primary {
			s := a.endpoint
			switch {
			case a.status == 0:
				s += " no response"
			case i < len(c.attempts)-1 || a.status != 200:
				s += fmt.Sprintf(" %d", a.status)
			}
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, " -> "), saw429, failedOver
}

func kind(c *call) string {
	if c.stream {
		return "stream"
	}
	return "plain "
}

// callEnded prints one line for a finished call.
func (p *printer) callEnded(d *demo, c *call) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d.mu.Lock()
	signalAt := d.signalAt
	d.mu.Unlock()
	desc, _, _ := d.path(c)
	if desc != "" {
		desc = "  " + p.paint(cyan, desc)
	}
	id := fmt.Sprintf("#%02d %s", c.n, kind(c))
	switch d.judge(c) {
	case completed:
		when := ""
		if !signalAt.IsZero() && c.start.Before(signalAt) {
			when = p.paint(yellow, "  (in flight at SIGTERM)")
		}
		answer := ""
		if d.sc.online { // offline answers are echoes of the prompt
			answer = "  " + excerpt(c.text, 40)
		}
		p.line("%s  %s  %s in %.2fs%s%s%s", p.stamp(c.end), id, p.paint(green, "completed"), c.end.Sub(c.start).Seconds(), desc, when, answer)
	case refused:
		p.line("%s  %s  %s", p.stamp(c.end), id, p.paint(yellow, "refused: ErrDraining"))
	default:
		reason := "wrong answer"
		if c.err != nil {
			reason = c.err.Error()
		}
		p.line("%s  %s  %s: %s%s", p.stamp(c.end), id, p.paint(red, "LOST"), reason, desc)
	}
}

// excerpt quotes the start of an answer on one line.
func excerpt(s string, n int) string {
	r := []rune(strings.Join(strings.Fields(s), " "))
	if len(r) > n {
		return fmt.Sprintf("%q...", string(r[:n]))
	}
	return fmt.Sprintf("%q", string(r))
}

// account prints what happened and returns the exit code.
func (d *demo) account(runErr error) int {
	p := d.p
	d.mu.Lock()
	defer d.mu.Unlock()

	var before, during, refusedN, lostN, inFlight, plain, streams, retried, retried429, failedOver, checked int
	for _, c := range d.calls {
		if c.stream {
			streams++
		} else {
			plain++
		}
		_, saw429, fo := d.path(c)
		o := d.judge(c)
		admittedBeforeSignal := c.start.Before(d.signalAt)
		if admittedBeforeSignal && c.end.After(d.signalAt) {
			inFlight++
		}
		switch o {
		case completed:
			// Offline, cross-check with the fake LLMs' own records:
			// exactly one full answer was written for this prompt.
			if !d.sc.online {
				served := 0
				for _, s := range d.sc.fakes {
					served += s.Completed(c.prompt)
				}
				if served != 1 {
					o = lost
					break
				}
				checked++
			}
			if len(c.attempts) > 1 {
				retried++
			}
			if c.end.Before(d.signalAt) {
				before++
			} else {
				during++
			}
			if saw429 {
				retried429++
			}
			if fo {
				failedOver++
			}
		case refused:
			refusedN++
		}
		if o == lost {
			lostN++
		}
	}
	completedN := before + during

	p.line("")
	p.title("What happened")
	p.line("  %d calls fired (%d plain, %d streaming); SIGTERM at %.2fs with %d of them in flight",
		len(d.calls), plain, streams, d.signalAt.Sub(d.start).Seconds(), inFlight)
	p.line("    %-36s %3d", "completed before the signal", before)
	p.line("    %-36s %s", "completed during the drain", p.paint(green, fmt.Sprintf("%3d", during)))
	p.line("    %-36s %s   new calls after the drain began", "refused with ErrDraining", p.paint(yellow, fmt.Sprintf("%3d", refusedN)))
	lostText := p.paint(green, fmt.Sprintf("%3d", lostN))
	if lostN > 0 {
		lostText = p.paint(red, fmt.Sprintf("%3d", lostN))
	}
	if d.sc.online {
		p.line("    %-36s %s", "lost (cut or failed)", lostText)
		p.line("  on the way: %d retried after an error from the API (429, 5xx or no response)", retried)
	} else {
		p.line("    %-36s %s", "lost (cut, failed or wrong)", lostText)
		p.line("  on the way: %d failed over from the primary's 503s to the fallback, %d retried after a 429", failedOver, retried429)
	}
	if d.drainErr == nil && runErr == nil {
		p.line("  drain time: %v of the %v allowed", d.drainEnd.Sub(d.drainStart).Round(time.Millisecond), d.sc.drainTimeout)
	} else {
		p.line("  drain: %s", p.paint(red, fmt.Sprint(errors.Join(d.drainErr, runErr))))
	}
	if d.sc.online {
		p.line("  answers not cross-checked: the real API keeps no records the demo can read, so completed")
		p.line("  means a whole answer came back (a stream through its closing [DONE]), not that it was checked")
	} else {
		p.line("  answers checked against the fake LLMs' records: %d of %d completed calls match", checked, completedN)
	}
	if lostN == 0 {
		p.line("  %s", p.paint(green+";"+bold, "nothing was lost: every call either completed in full or was refused before it was sent"))
	}
	p.line("")
	p.line("summary: %d calls, %d completed, %d refused, %d lost", len(d.calls), completedN, refusedN, lostN)
	if lostN > 0 || runErr != nil {
		return 1
	}
	return 0
}

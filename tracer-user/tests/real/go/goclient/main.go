// Command goclient is a net/http client for tcplinger's real-software
// scenarios: each -mode reproduces a client behaviour from an incident story.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

var (
	url      = flag.String("url", "http://127.0.0.1:8080/", "what to request")
	mode     = flag.String("mode", "keepalive", "keepalive | timeout | deadline | transport | pool | nokeepalive")
	requests = flag.Int("n", 20, "requests to make (keepalive, timeout, transport, nokeepalive, pool)")
	interval = flag.Duration("interval", 50*time.Millisecond, "pause between requests")
	timeout  = flag.Duration("timeout", time.Second, "http.Client.Timeout (timeout mode)")
	deadline = flag.Duration("deadline", 3*time.Second, "deadline set once on each new connection (deadline mode)")
	duration = flag.Duration("duration", 25*time.Second, "how long to keep requesting (deadline) or to hold (pool, transport)")
	conns    = flag.Int("conns", 16, "Transport.MaxConnsPerHost (pool mode)")
	workers  = flag.Int("workers", 1, "concurrent requesters (keepalive, timeout)")
)

var ok, failed int64

func get(c *http.Client) {
	resp, err := c.Get(*url)
	if err != nil {
		atomic.AddInt64(&failed, 1)
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	atomic.AddInt64(&ok, 1)
}

// sequential makes n requests with c, from `workers` goroutines, pausing
// between them.
func sequential(c *http.Client, n int) {
	var wg sync.WaitGroup
	var next int64
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for atomic.AddInt64(&next, 1) <= int64(n) {
				get(c)
				time.Sleep(*interval)
			}
		}()
	}
	wg.Wait()
}

func main() {
	flag.Parse()
	switch *mode {
	case "keepalive":
		// One shared client and pool: connections are reused.
		sequential(&http.Client{}, *requests)
	case "timeout":
		// Gives up after -timeout: the connection is closed while the
		// server is still working on the request.
		sequential(&http.Client{Timeout: *timeout}, *requests)
	case "deadline":
		// A deadline set once when the connection is made, as a custom
		// Dial does; it never moves, so each pooled connection dies at
		// that age and the transport retries on a new one.
		dialer := &net.Dialer{}
		tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, addr)
			if err == nil {
				err = conn.SetDeadline(time.Now().Add(*deadline))
			}
			return conn, err
		}}
		c := &http.Client{Transport: tr}
		end := time.Now().Add(*duration)
		for time.Now().Before(end) {
			get(c)
			time.Sleep(*interval)
		}
	case "transport":
		// A new Transport (and pool) per request, never closed: each
		// leaves an idle keep-alive connection behind.
		for i := 0; i < *requests; i++ {
			get(&http.Client{Transport: &http.Transport{}})
			time.Sleep(*interval)
		}
		time.Sleep(*duration)
	case "pool":
		// Requests without a timeout to a server that never answers: they
		// hold every connection the pool may open.
		c := &http.Client{Transport: &http.Transport{MaxConnsPerHost: *conns}}
		for i := 0; i < *requests; i++ {
			go get(c)
		}
		time.Sleep(*duration)
	case "nokeepalive":
		sequential(&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}, *requests)
	default:
		fmt.Fprintf(os.Stderr, "goclient: unknown -mode %q\n", *mode)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "goclient: %d ok, %d failed\n", atomic.LoadInt64(&ok), atomic.LoadInt64(&failed))
}

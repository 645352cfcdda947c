// Command goserver is a plain net/http server for tcplinger's real-software
// scenarios: each -mode reproduces a server behaviour from an incident story.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address:port to serve on")
	mode := flag.String("mode", "normal", "normal | close (Connection: close on every response) | noanswer (read the request, never answer)")
	delay := flag.Duration("delay", 0, "time each handler takes before answering (a stuck handler: longer than the client's timeout)")
	idle := flag.Duration("idle", 0, "http.Server.IdleTimeout (0: Go's default, none)")
	flag.Parse()

	handler := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch *mode {
		case "noanswer":
			// The request was read; the answer never comes. The handler
			// returns only when the client goes away.
			<-r.Context().Done()
			return
		case "close":
			w.Header().Set("Connection", "close")
		}
		if *delay > 0 {
			time.Sleep(*delay)
		}
		_, _ = io.WriteString(w, "ok\n")
	}
	srv := &http.Server{Handler: http.HandlerFunc(handler), IdleTimeout: *idle}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("goserver: %v", err)
	}
	// The harness waits for this line instead of sleeping.
	fmt.Fprintf(os.Stdout, "listening %s\n", ln.Addr())
	log.Fatal(srv.Serve(ln))
}

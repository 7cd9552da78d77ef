package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
)

const statsPath = "/lab/stats"

// soapStats counts the SOAP requests the simulator serves, by method. The simulator
// writes each request body to simulator.TraceFile when simulator.Trace is set (an
// *os.File): that is the write end of a pipe whose other end this reads, so every
// request on /sdk is counted whatever client sent it (the launcher's own at start
// included). Each trace is written by one Write, which an *os.File does whole, so
// traces never interleave; a request's method is on its first line.
type soapStats struct {
	mu       sync.Mutex
	started  time.Time
	total    int
	byMethod map[string]int
}

var (
	tracedRequest  = []byte("Request: ")
	tracedResponse = []byte("Response: ")
)

const maxRequestStart = 16 * 1024 // a method element further in is counted "(unparsed)"

// installStats turns the simulator's SOAP trace into the counters and serves them as
// JSON on GET /lab/stats.
func installStats(service *simulator.Service) error {
	reader, writer, err := os.Pipe()
	if err != nil {
		return err
	}
	stats := &soapStats{started: time.Now(), byMethod: map[string]int{}}
	go stats.follow(reader)
	simulator.TraceFile = writer
	simulator.Trace = true
	service.HandleFunc(statsPath, stats.serve)
	return nil
}

// follow counts each traced request: its method is the first element in the Body,
// read from the first lines of the trace (pyVmomi puts the XML declaration on a line
// of its own). Responses, and the rest of long lines, are read and dropped.
func (s *soapStats) follow(trace io.Reader) {
	lines := bufio.NewReaderSize(trace, 64*1024)
	var request []byte // the start of a request whose method is not known yet
	pending, lineStart := false, true
	count := func(method string) {
		s.mu.Lock()
		s.total++
		s.byMethod[method]++
		s.mu.Unlock()
		pending, request = false, request[:0]
	}
	for {
		chunk, isPrefix, err := lines.ReadLine()
		if err != nil {
			return
		}
		traceStart := lineStart && (bytes.HasPrefix(chunk, tracedRequest) || bytes.HasPrefix(chunk, tracedResponse))
		if traceStart && pending {
			count("(unparsed)")
		}
		if traceStart && bytes.HasPrefix(chunk, tracedRequest) {
			pending = true
			chunk = chunk[len(tracedRequest):]
		}
		if pending && len(request) < maxRequestStart {
			request = append(append(request, chunk...), '\n')
			if method, found := soapMethod(request); found {
				count(method)
			}
		}
		lineStart = !isPrefix
	}
}

// soapMethod is the name of the first element in the envelope's Body
// (RetrievePropertiesEx), if the start of the envelope given reaches it.
func soapMethod(envelope []byte) (string, bool) {
	decoder := xml.NewDecoder(bytes.NewReader(envelope))
	inBody := false
	for {
		token, err := decoder.Token()
		if err != nil {
			return "", false
		}
		if start, ok := token.(xml.StartElement); ok {
			if inBody {
				return start.Name.Local, true
			}
			inBody = start.Name.Local == "Body"
		}
	}
}

// serve answers GET /lab/stats: {"since": ..., "soap_requests": N, "by_method": {...}}.
func (s *soapStats) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	s.mu.Lock()
	methods := make(map[string]int, len(s.byMethod))
	for name, count := range s.byMethod {
		methods[name] = count
	}
	body, _ := json.Marshal(map[string]any{
		"since":         s.started.UTC().Format(time.RFC3339Nano),
		"soap_requests": s.total,
		"by_method":     methods,
	})
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.Copy(w, bytes.NewReader(body))
}

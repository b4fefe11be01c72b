// Package server is coild's REST API, used by the CNI plugin on the same
// node. It turns HTTP requests into calls of its Allocator, PoolSelector and
// Egress interfaces (coild/ipam, coild/poolselector and coild/egress, which
// it does not import), and their errors into the documented status codes.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/internal/jsonappend"
	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Allocator hands out the node's addresses (coild/ipam).
type Allocator interface {
	// Ready reports whether the allocator's state is restored.
	Ready() bool
	// Allocate returns the address of owner's attachment, allocating one
	// from pool if it has none.
	Allocate(ctx context.Context, pool string, owner model.Owner) (model.Address, error)
	// Lookup returns the address of an attachment.
	Lookup(att api.Attachment) (model.Address, bool)
	// Release frees the address of an attachment, reporting what it freed.
	Release(ctx context.Context, att api.Attachment) (model.Address, bool, error)
	// ReleaseHeld is Release, but the address is handed out again only
	// once free is called (never nil).
	ReleaseHeld(ctx context.Context, att api.Attachment) (addr model.Address, released bool, free func(), err error)
	// Attachments lists every attachment holding an address.
	Attachments() map[api.Attachment]model.Address
	// Blocks returns the node's blocks by pool.
	Blocks() map[string][]model.Block
	// Usage is the number of blocks owned and addresses in use.
	Usage() (blocks, addresses int)
	// FreeAddresses is, per pool, the addresses free in owned blocks.
	FreeAddresses() map[string]int
}

// PoolSelector chooses the pool of a namespace (coild/poolselector).
type PoolSelector interface {
	PoolFor(ctx context.Context, namespace string) (string, error)
}

// Egress sets up the egress tunnels of the node's pods (coild/egress).
type Egress interface {
	// SetupPod configures a pod whose interface is up, during its ADD.
	SetupPod(ctx context.Context, addr model.Address) (EgressSetup, error)
	// PodReleased learns that a pod's address was released (DEL, GC).
	PodReleased(addr model.Address)
}

// setupPreparer is an Egress that, as a pod's ADD allocates, tells
// without I/O whether SetupPod of the pod could set anything up (POST /ip
// then says when not, and the plugin skips POST /egress), and starts
// fetching what SetupPod will need meanwhile (coild/egress).
type setupPreparer interface {
	PrepareSetup(namespace, name string, annotations map[string]string) bool
}

// PodNetNS checks the network namespace paths that requests carry
// (nodenet): a path from a request is not trusted.
type PodNetNS interface {
	// Check refuses a path that is not a network namespace, or is the
	// host's own.
	Check(path string) error
	// CheckAddresses refuses a namespace whose interface ifName does not
	// hold addrs.
	CheckAddresses(path, ifName string, addrs []netip.Addr) error
}

// PodLinks takes the links of a released pod off the node (coild/daemon
// over nodenet). DEL removes what stops traffic, the host routes, at once
// and answers; the veth, whose deletion takes the kernel tens of
// milliseconds, goes afterwards, and its address is handed out again only
// then.
type PodLinks interface {
	// Detach removes the host routes to addr's addresses and returns the
	// host link they went through (zero when there was none).
	Detach(addr model.Address) (HostLink, error)
	// RemoveLater deletes the pod's links (its veth, found from addr's
	// network namespace, and link) in the background, and calls done once
	// they are gone. A deletion that keeps failing never calls it: the
	// address stays held until coild restarts (whose start-up deletes the
	// veths of pods without an address before it serves).
	RemoveLater(addr model.Address, link HostLink, done func())
}

// HostLink is a host link found by its routes.
type HostLink struct {
	Index int
	Name  string
}

// EgressSetup is what Egress.SetupPod did for a pod; POST /egress reports
// it as an api.EgressResponse.
type EgressSetup struct {
	// Clients are the egresses the pod is a client of.
	Clients []EgressClient
	// Gateway is the egress ("namespace/name") the pod is a gateway of.
	Gateway string
	// Missing lists egresses the pod is annotated for that do not exist.
	Missing []string
}

// EgressClient is one egress of a client pod and the gateway pod
// ("namespace/name") and address it goes through now; GatewayPod is empty
// while the egress has no running gateway.
type EgressClient struct {
	Egress     string
	GatewayPod string
	Gateway    netip.Addr
}

// Config wires a Server.
type Config struct {
	Allocator Allocator
	Selector  PoolSelector
	// NetNS checks netns paths before they are stored or programmed; nil
	// accepts every path (tests of the server alone).
	NetNS PodNetNS
	// Egress may be nil: POST /egress then sets nothing up.
	Egress Egress
	// PodLinks may be nil: DEL then releases the address and leaves the
	// links to the caller, who must remove them before.
	PodLinks PodLinks
	// RequestTimeout bounds the etcd work of one request.
	RequestTimeout time.Duration
	// GCMinAge protects allocations younger than this from CNI GC: an ADD
	// may still be in flight when the runtime lists valid attachments.
	GCMinAge time.Duration
	// Ready reports whether coild has finished starting.
	Ready func() bool
	// Registry receives the metrics; nil means a fresh registry.
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// Server serves the REST API.
type Server struct {
	cfg     Config
	metrics *metrics
	mux     *http.ServeMux
	now     func() time.Time
}

// New returns a Server with its routes.
func New(cfg Config) *Server {
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.Ready == nil {
		cfg.Ready = cfg.Allocator.Ready
	}
	s := &Server{cfg: cfg, metrics: newMetrics(cfg.Registry, cfg.Allocator), mux: http.NewServeMux(), now: time.Now}
	s.mux.HandleFunc("POST "+api.PathIP, s.handleAllocate)
	s.mux.HandleFunc("GET "+api.PathIP+"/{ns}/{pod}/{cid}", s.handleGet)
	s.mux.HandleFunc("DELETE "+api.PathIP+"/{ns}/{pod}/{cid}", s.handleRelease)
	s.mux.HandleFunc("GET "+api.PathStatus, s.handleStatus)
	s.mux.HandleFunc("POST "+api.PathGC, s.handleGC)
	s.mux.HandleFunc("POST "+api.PathEgress, s.handleEgress)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": 200})
	})
	s.mux.HandleFunc("GET "+api.PathReady, s.handleReady)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	return s
}

// ServeHTTP implements http.Handler. Unknown paths and methods get JSON
// errors like everything else.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	if pattern == "" {
		// Let the mux decide between 404 and 405, but answer in JSON.
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		for k, v := range rec.header {
			if k != "Content-Type" && k != "X-Content-Type-Options" {
				w.Header()[k] = v
			}
		}
		writeError(w, rec.status, reasonFor(rec.status), fmt.Sprintf("%s %s: %s", r.Method, r.URL.Path, http.StatusText(rec.status)))
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) handleReady(w http.ResponseWriter, _ *http.Request) {
	if !s.cfg.Ready() {
		writeError(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "coild is restoring its state and not ready yet")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": 200})
}

// decodeRequest reads and checks the body of POST /ip and POST /egress into
// req, answering the failure itself when it returns false.
func (s *Server) decodeRequest(w http.ResponseWriter, r *http.Request, req interface{ Validate() error }) bool {
	err := decodeBody(w, r, req)
	if err == nil {
		err = req.Validate()
	}
	if err != nil {
		s.metrics.failures.WithLabelValues(api.ReasonBadRequest).Inc()
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return false
	}
	if !s.cfg.Ready() {
		s.metrics.failures.WithLabelValues(api.ReasonUnavailable).Inc()
		writeError(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "coild is restoring its state and not ready yet")
		return false
	}
	return true
}

func (s *Server) handleAllocate(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	var req api.AllocRequest
	if !s.decodeRequest(w, r, &req) {
		return
	}
	if req.NetNS != "" && s.cfg.NetNS != nil {
		if err := s.cfg.NetNS.Check(req.NetNS); err != nil {
			s.badRequest(w, fmt.Errorf("pod %s/%s: %w", req.PodNamespace, req.PodName, err))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	att := req.Attachment()
	// A retried ADD returns what the first got, whatever the namespace's
	// pool is now.
	addr, ok := s.cfg.Allocator.Lookup(att)
	skipEgress := false
	if !ok {
		// Before the allocation: a Pod that POST /egress will need from
		// the API server is fetched meanwhile. A retried ADD (the Lookup
		// above) is not judged and asks.
		skipEgress = !s.prepareEgress(req.PodNamespace, req.PodName, req.EgressAnnotations)
		pool, err := s.cfg.Selector.PoolFor(ctx, req.PodNamespace)
		if err != nil {
			s.fail(w, fmt.Errorf("choose pool for pod %s/%s: %w", req.PodNamespace, req.PodName, err))
			return
		}
		addr, err = s.cfg.Allocator.Allocate(ctx, pool, model.Owner{
			Namespace: req.PodNamespace, Pod: req.PodName,
			ContainerID: att.ContainerID, Interface: att.Interface, NetNS: req.NetNS, PodUID: req.PodUID,
			Network: req.Network,
		})
		if err != nil {
			s.fail(w, fmt.Errorf("allocate address for pod %s/%s: %w", req.PodNamespace, req.PodName, err))
			return
		}
		s.metrics.allocations.Inc()
		if req.EgressAnnotations != nil {
			s.metrics.annotated.Inc()
		}
		s.metrics.latency.Observe(s.now().Sub(start).Seconds())
	}
	writeAllocated(w, addr, skipEgress)
}

// prepareEgress reports whether POST /egress of a pod could set anything
// up (true when Egress cannot tell), and lets Egress prepare it. Egress
// changes after that (an egress created, a pod annotated) reach the pod
// through the egress reconciler's passes, as they do for every running
// pod.
func (s *Server) prepareEgress(namespace, pod string, annotations map[string]string) bool {
	if s.cfg.Egress == nil {
		return false
	}
	p, ok := s.cfg.Egress.(setupPreparer)
	return !ok || p.PrepareSetup(namespace, pod, annotations)
}

// handleEgress sets up the egress tunnels of a pod whose interface the
// plugin has just configured, before its ADD returns.
func (s *Server) handleEgress(w http.ResponseWriter, r *http.Request) {
	var req api.EgressRequest
	if !s.decodeRequest(w, r, &req) {
		return
	}
	att := req.Attachment()
	addr, ok := s.cfg.Allocator.Lookup(att)
	if !ok || addr.Namespace != req.PodNamespace || addr.Pod != req.PodName {
		writeError(w, http.StatusNotFound, api.ReasonNotFound,
			fmt.Sprintf("no address for pod %s/%s container %s interface %s: allocate first", req.PodNamespace, req.PodName, att.ContainerID, att.Interface))
		return
	}
	if req.NetNS != "" {
		addr.NetNS = req.NetNS
	}
	if s.cfg.NetNS != nil {
		// The namespace is programmed as this pod's: it must be a pod's,
		// and hold the addresses allocated to this attachment.
		var addrs []netip.Addr
		for _, a := range []netip.Addr{addr.IPv4, addr.IPv6} {
			if a.IsValid() {
				addrs = append(addrs, a)
			}
		}
		err := s.cfg.NetNS.Check(addr.NetNS)
		if err == nil {
			err = s.cfg.NetNS.CheckAddresses(addr.NetNS, att.Interface, addrs)
		}
		if err != nil {
			s.badRequest(w, fmt.Errorf("egress of pod %s/%s: %w", req.PodNamespace, req.PodName, err))
			return
		}
	}
	var setup EgressSetup
	if s.cfg.Egress != nil {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		var err error
		if setup, err = s.cfg.Egress.SetupPod(ctx, addr); err != nil {
			s.fail(w, fmt.Errorf("set up egress of pod %s/%s: %w", req.PodNamespace, req.PodName, err))
			return
		}
	}
	writeJSON(w, http.StatusOK, egressResponse(setup))
}

func egressResponse(setup EgressSetup) api.EgressResponse {
	resp := api.EgressResponse{Status: http.StatusOK, Gateway: setup.Gateway, Missing: setup.Missing}
	for _, c := range setup.Clients {
		route := api.EgressRoute{Egress: c.Egress}
		if c.GatewayPod != "" {
			route.GatewayPod, route.Gateway = c.GatewayPod, c.Gateway.String()
		}
		resp.Client = append(resp.Client, route)
	}
	return resp
}

func allocResponse(addr model.Address, skipEgress bool) api.AllocResponse {
	resp := api.AllocResponse{Status: http.StatusOK, SkipEgress: skipEgress}
	for _, ip := range addr.IPs() {
		resp.Addresses = append(resp.Addresses, ip.String())
	}
	if len(resp.Addresses) > 0 {
		resp.Address = resp.Addresses[0]
	}
	return resp
}

func attachmentFromPath(r *http.Request) (api.Attachment, error) {
	cid := r.PathValue("cid")
	if r.PathValue("ns") == "" || r.PathValue("pod") == "" || cid == "" {
		return api.Attachment{}, errors.New("path must be /ip/<namespace>/<pod>/<container-id>")
	}
	return api.Attachment{ContainerID: cid, Interface: r.URL.Query().Get(api.QueryInterface)}.Normalized(), nil
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	att, err := attachmentFromPath(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return
	}
	addr, ok := s.cfg.Allocator.Lookup(att)
	if !ok || addr.Namespace != r.PathValue("ns") || addr.Pod != r.PathValue("pod") {
		writeError(w, http.StatusNotFound, api.ReasonNotFound,
			fmt.Sprintf("no address for pod %s/%s container %s interface %s", r.PathValue("ns"), r.PathValue("pod"), att.ContainerID, att.Interface))
		return
	}
	writeAllocated(w, addr, false)
}

func (s *Server) handleRelease(w http.ResponseWriter, r *http.Request) {
	att, err := attachmentFromPath(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return
	}
	if addr, ok := s.cfg.Allocator.Lookup(att); ok && (addr.Namespace != r.PathValue("ns") || addr.Pod != r.PathValue("pod")) {
		// The container id is unique; a mismatching pod name means the
		// caller is confused, and freeing another pod's address would hurt.
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest,
			fmt.Sprintf("container %s belongs to pod %s/%s, not %s/%s", att.ContainerID, addr.Namespace, addr.Pod, r.PathValue("ns"), r.PathValue("pod")))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	if s.cfg.PodLinks == nil {
		addr, released, err := s.cfg.Allocator.Release(ctx, att)
		if err != nil {
			s.fail(w, fmt.Errorf("release address of container %s: %w", att.ContainerID, err))
			return
		}
		if released {
			s.metrics.releases.Inc()
			if s.cfg.Egress != nil {
				s.cfg.Egress.PodReleased(addr)
			}
		}
		writeReleased(w, false)
		return
	}
	// Traffic to the pod stops with its host routes; the address is
	// released, and held until the pod's links are gone.
	var link HostLink
	if addr, ok := s.cfg.Allocator.Lookup(att); ok {
		var err error
		if link, err = s.cfg.PodLinks.Detach(addr); err != nil {
			s.fail(w, fmt.Errorf("remove host routes of container %s: %w", att.ContainerID, err))
			return
		}
	}
	addr, released, free, err := s.cfg.Allocator.ReleaseHeld(ctx, att)
	if err != nil {
		free()
		s.fail(w, fmt.Errorf("release address of container %s: %w", att.ContainerID, err))
		return
	}
	if !released {
		free()
		writeReleased(w, false)
		return
	}
	s.metrics.releases.Inc()
	writeReleased(w, true)
	s.cfg.PodLinks.RemoveLater(addr, link, func() {
		if s.cfg.Egress != nil {
			s.cfg.Egress.PodReleased(addr)
		}
		free()
	})
}

func (s *Server) handleStatus(w http.ResponseWriter, _ *http.Request) {
	resp := api.StatusResponse{Status: http.StatusOK, AddressBlocks: map[string][]string{}, Pods: map[string]string{}}
	for pool, blocks := range s.cfg.Allocator.Blocks() {
		for _, b := range blocks {
			resp.AddressBlocks[pool] = append(resp.AddressBlocks[pool], b.String())
		}
	}
	for att, addr := range s.cfg.Allocator.Attachments() {
		key := att.ContainerID
		if att.Interface != api.DefaultInterface {
			key += "/" + att.Interface
		}
		ips := addr.IPs()
		strs := make([]string, len(ips))
		for i, ip := range ips {
			strs[i] = ip.String()
		}
		resp.Pods[key] = strings.Join(strs, ",")
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleGC(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	err := decodeBody(w, r, &req)
	if err == nil {
		err = req.Validate()
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
		return
	}
	if !s.cfg.Ready() {
		writeError(w, http.StatusServiceUnavailable, api.ReasonUnavailable, "coild is restoring its state and not ready yet")
		return
	}
	valid := map[api.Attachment]bool{}
	for _, a := range req.ValidAttachments {
		valid[a.Normalized()] = true
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	released := 0
	var errs []error
	for att, addr := range s.cfg.Allocator.Attachments() {
		// Only the collected network's own addresses are candidates: the
		// runtime did not list the others' attachments, and an address of
		// unknown network (an older record) may be any network's.
		if addr.Network != req.Network || valid[att] || s.now().Sub(addr.CreatedAt) < s.cfg.GCMinAge {
			continue
		}
		if _, ok, err := s.cfg.Allocator.Release(ctx, att); err != nil {
			errs = append(errs, err)
			continue
		} else if ok {
			released++
			s.metrics.releases.Inc()
			s.cfg.Logger.Info("released address of invalid attachment", "network", req.Network, "container", att.ContainerID, "interface", att.Interface, "pod", addr.Namespace+"/"+addr.Pod)
			if s.cfg.Egress != nil {
				s.cfg.Egress.PodReleased(addr)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		s.fail(w, fmt.Errorf("gc released %d and failed: %w", released, err))
		return
	}
	writeJSON(w, http.StatusOK, api.GCResponse{Status: http.StatusOK, Released: released})
}

// fail answers an error with its status code and reason.
func (s *Server) fail(w http.ResponseWriter, err error) {
	reason := classify(err)
	status := statusOf(reason)
	s.metrics.failures.WithLabelValues(reason).Inc()
	s.cfg.Logger.Warn("request failed", "status", status, "error", err)
	writeError(w, status, reason, err.Error())
}

// badRequest refuses a request for what it carries, logged because a
// refused netns path may be an attempt to reach the host.
func (s *Server) badRequest(w http.ResponseWriter, err error) {
	s.metrics.failures.WithLabelValues(api.ReasonBadRequest).Inc()
	s.cfg.Logger.Warn("request refused", "status", http.StatusBadRequest, "error", err)
	writeError(w, http.StatusBadRequest, api.ReasonBadRequest, err.Error())
}

// buffers holds the byte buffers requests are read into and answers
// written from, so that a request allocates none of its own.
var buffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	bp := buffers.Get().(*[]byte)
	defer func() { buffers.Put(bp) }()
	buf := bytes.NewBuffer((*bp)[:0])
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, api.MaxRequestBytes))
	*bp = buf.Bytes()
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return fmt.Errorf("request body larger than %d bytes", api.MaxRequestBytes)
	}
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	body := buf.Bytes()
	if a, ok := v.(*api.AllocRequest); ok && decodeAllocFast(body, a) {
		// POST /ip as clients write it, decoded without reflection.
		return nil
	}
	return decodeJSON(body, v)
}

// decodeJSON decodes body, one JSON object of v's fields and nothing
// after it, into v.
func decodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON body: %v", err)
	}
	// The whole body is at hand: what follows the object must be blank.
	if len(bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n")) > 0 {
		return errors.New("malformed JSON body: trailing data after the object")
	}
	return nil
}

// jsonType is the Content-Type of every answer, shared rather than built
// per answer.
var jsonType = []string{"application/json"}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header()["Content-Type"] = jsonType
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeAllocated answers POST /ip (and GET /ip/...) with addr: the JSON
// of allocResponse(addr, skipEgress), as writeJSON would write it, without reflection.
func writeAllocated(w http.ResponseWriter, addr model.Address, skipEgress bool) {
	bp := buffers.Get().(*[]byte)
	b := append((*bp)[:0], `{"status":200,"address":`...)
	ips := addr.IPs()
	if len(ips) == 0 {
		b = append(b, `"","addresses":null`...)
	} else {
		b = appendAddr(b, ips[0])
		b = append(b, `,"addresses":[`...)
		for i, ip := range ips {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendAddr(b, ip)
		}
		b = append(b, ']')
	}
	if skipEgress {
		b = append(b, `,"skip-egress":true`...)
	}
	b = append(b, "}\n"...)
	w.Header()["Content-Type"] = jsonType
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	*bp = b
	buffers.Put(bp)
}

// appendAddr appends ip as a JSON string.
func appendAddr(b []byte, ip netip.Addr) []byte {
	if ip.Zone() != "" {
		return jsonappend.String(b, ip.String())
	}
	b = append(b, '"')
	b = ip.AppendTo(b)
	return append(b, '"')
}

// writeReleased answers DELETE /ip/...: api.ReleaseResponse as
// writeJSON would write it, without reflection.
func writeReleased(w http.ResponseWriter, removesLinks bool) {
	w.Header()["Content-Type"] = jsonType
	w.WriteHeader(http.StatusOK)
	if removesLinks {
		_, _ = io.WriteString(w, "{\"status\":200,\"removesLinks\":true}\n")
		return
	}
	_, _ = io.WriteString(w, "{\"status\":200}\n")
}

func writeError(w http.ResponseWriter, status int, reason, msg string) {
	writeJSON(w, status, api.ErrorResponse{Status: status, Error: msg, Reason: reason})
}

// classify returns the reason of a failure of the allocator, the pool
// selector or egress: by the model's sentinels, else by the reason the
// error was marked with (api.WithReason).
func classify(err error) string {
	switch {
	case errors.Is(err, model.ErrPoolExhausted):
		return api.ReasonPoolExhausted
	case errors.Is(err, model.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return api.ReasonUnavailable
	case errors.Is(err, model.ErrPoolNotFound):
		// An admin may create the pool: retrying later can succeed.
		return api.ReasonUnavailable
	}
	// The allocator not restored yet, the egress state still loading
	// after a restart, a selected pool missing...
	if reason := api.ReasonOf(err); reason != "" {
		return reason
	}
	return api.ReasonInternal
}

// statusOf is the status code coild answers a failure of reason with.
func statusOf(reason string) int {
	switch reason {
	case api.ReasonBadRequest:
		return http.StatusBadRequest
	case api.ReasonNotFound:
		return http.StatusNotFound
	case api.ReasonPoolExhausted, api.ReasonUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func reasonFor(status int) string {
	switch status {
	case http.StatusNotFound:
		return api.ReasonNotFound
	case http.StatusBadRequest, http.StatusMethodNotAllowed:
		return api.ReasonBadRequest
	}
	return api.ReasonInternal
}

type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }

// IsLoopback reports whether a listen address (host:port) binds only the
// node itself. coild's API allocates addresses without authentication, so
// it must never be reachable from the network.
func IsLoopback(hostport string) bool {
	host, _, found := strings.Cut(hostport, ":")
	if strings.HasPrefix(hostport, "[") {
		end := strings.Index(hostport, "]")
		if end < 0 {
			return false
		}
		host, found = hostport[1:end], true
	}
	if !found || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

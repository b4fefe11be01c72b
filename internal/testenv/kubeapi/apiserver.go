package kubeapitest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	"k8s.io/client-go/rest"
	clientcmdv1 "k8s.io/client-go/tools/clientcmd/api/v1"
	"sigs.k8s.io/yaml"
)

// AdminUser is the user name of the token every Server accepts as cluster
// admin (group system:masters, which RBAC never restricts).
const AdminUser = "coil-test-admin"

// ServiceCIDR is the servers' Service network; the `kubernetes` Service
// gets its first address, KubernetesServiceIP.
const (
	ServiceCIDR         = "10.96.0.0/16"
	KubernetesServiceIP = "10.96.0.1"
)

// ErrNotReady means the server did not answer /readyz with 200 in time;
// the error carries the end of its log.
var ErrNotReady = errors.New("kube-apiserver did not become ready")

// User is an extra identity the server accepts by bearer token, for tests
// that check RBAC rules with a restricted user.
type User struct {
	Name   string
	Groups []string
}

// Options configure Start.
type Options struct {
	// EtcdEndpoint is the client URL of the etcd the server stores into
	// (plain http; the embedded etcd of internal/testenv/etcd fits). Required.
	EtcdEndpoint string
	// Dir holds the server's certificates, keys, token file and log. It
	// must exist; a test's t.TempDir() fits. Required.
	Dir string
	// EtcdPrefix is the server's key prefix in etcd. Empty picks one that
	// is unique per Start, so servers can share one etcd.
	EtcdPrefix string
	// Binary is the kube-apiserver to run; empty calls Ensure.
	Binary string
	// Users are extra token users; Server.Token returns their tokens.
	Users []User
	// ExtraArgs are appended to the command line; a later flag wins, so
	// they can override the defaults.
	ExtraArgs []string
	// ReadyTimeout bounds the wait for /readyz (default 90s: a cold start
	// on two busy cores takes 10-20s).
	ReadyTimeout time.Duration
	// NetNS, when set, is the path of a network namespace (for example
	// /var/run/netns/ctl) to run the server in, through nsenter.
	NetNS string
	// BindAddress is the address the server listens on and advertises;
	// default 127.0.0.1. With NetNS it is an address inside that namespace.
	BindAddress string
	// Detached servers outlive the process that started them (a demo
	// cluster left running); without it the server dies with its parent.
	Detached bool
	// ServiceAccounts enables the ServiceAccount admission plugin, which
	// gives pods their tokens; it needs a controller manager that creates
	// the "default" service accounts (the real-node clusters of mtest).
	ServiceAccounts bool
	// Dial, when set, opens the connections to the server, both for the
	// readiness probe and in Server.Config: a server inside NetNS is only
	// reachable through a dialer that enters the namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Server is a running kube-apiserver.
type Server struct {
	// Config reaches the server as AdminUser, verifying its certificate.
	Config *rest.Config
	// URL is the https URL of the server.
	URL string
	// CAFile holds the certificate that signs the serving certificate.
	CAFile string
	// LogFile receives the server's output.
	LogFile string
	// EtcdPrefix is the prefix the server stores under.
	EtcdPrefix string

	dir    string
	tokens map[string]string
	proc   *process
}

// process is one run of the binary.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	// waitErr is the result of cmd.Wait, valid once exited is closed.
	waitErr  error
	stopOnce sync.Once
}

var startSeq atomic.Int64

// Start runs a kube-apiserver on 127.0.0.1 (or Options.BindAddress,
// inside Options.NetNS) with a random port and waits until it is ready. The caller must call Stop, also when the test fails.
//
// The server uses RBAC and Node authorization, a static token file for
// authentication, a self-signed serving certificate generated into
// Dir/pki, and a service-account signing key generated into Dir. The
// ServiceAccount admission plugin is off unless Options.ServiceAccounts,
// because without a controller manager no "default" service accounts exist
// for pods to use.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.EtcdEndpoint == "" || opts.Dir == "" {
		return nil, fmt.Errorf("kubeapitest.Start: EtcdEndpoint and Dir are required")
	}
	bin := opts.Binary
	if bin == "" {
		var err error
		if bin, err = Ensure(ctx); err != nil {
			return nil, err
		}
	}
	s := &Server{dir: opts.Dir, tokens: map[string]string{}, EtcdPrefix: opts.EtcdPrefix}
	if s.EtcdPrefix == "" {
		s.EtcdPrefix = fmt.Sprintf("/kube-test/%d-%d-%d", os.Getpid(), time.Now().UnixNano(), startSeq.Add(1))
	}
	if err := s.writeFiles(opts.Users); err != nil {
		return nil, err
	}
	// The port is chosen by binding and releasing it, so another process
	// may grab it before the server does; try a few times in that case.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		err := s.start(ctx, bin, opts)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errPortInUse) || ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

var errPortInUse = errors.New("port in use")

func (s *Server) start(ctx context.Context, bin string, opts Options) error {
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	pki := filepath.Join(s.dir, "pki")
	bind := opts.BindAddress
	if bind == "" {
		bind = "127.0.0.1"
	}
	args := []string{
		"--bind-address=" + bind,
		"--advertise-address=" + bind,
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + pki,
		"--etcd-servers=" + opts.EtcdEndpoint,
		"--etcd-prefix=" + s.EtcdPrefix,
		"--token-auth-file=" + filepath.Join(s.dir, "tokens.csv"),
		"--authorization-mode=Node,RBAC",
		"--anonymous-auth=false",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(s.dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(s.dir, "sa.key"),
		"--service-cluster-ip-range=" + ServiceCIDR,
		// The server is alone: no peer endpoints to keep in step.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}
	if !opts.ServiceAccounts {
		args = append(args, "--disable-admission-plugins=ServiceAccount")
	}
	args = append(args, opts.ExtraArgs...)

	s.LogFile = filepath.Join(s.dir, "kube-apiserver.log")
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open kube-apiserver log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	if opts.NetNS != "" {
		// nsenter enters the namespace and execs the server in place, so
		// the process (and its PID) is the server itself.
		cmd = exec.Command("nsenter", append([]string{"--net=" + opts.NetNS, "--", bin}, args...)...)
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Kill the server if the test process dies without calling Stop
	// (panic, timeout, SIGKILL): no stray apiserver outlives its test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if opts.Detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	s.proc = p
	go func() {
		// Owned by the process: Stop waits for it through exited.
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	s.URL = "https://" + net.JoinHostPort(bind, strconv.Itoa(port))
	s.CAFile = filepath.Join(pki, "apiserver.crt")
	if err := s.waitReady(ctx, opts.ReadyTimeout, opts.Dial); err != nil {
		s.Stop()
		return err
	}
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		s.Stop()
		return fmt.Errorf("read serving certificate: %w", err)
	}
	s.Config = &rest.Config{
		Host:            s.URL,
		BearerToken:     s.tokens[AdminUser],
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		// Tests create objects in bursts; the default 5 QPS would throttle them.
		QPS:   200,
		Burst: 400,
		Dial:  opts.Dial,
	}
	return nil
}

// waitReady polls /readyz until it answers 200, the process exits or the
// timeout passes.
func (s *Server) waitReady(ctx context.Context, timeout time.Duration, dial func(context.Context, string, string) (net.Conn, error)) error {
	if timeout <= 0 {
		timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The certificate only exists once the server has generated it, so
	// readiness is probed without verification; Config verifies later.
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DialContext: dial},
	}
	defer hc.CloseIdleConnections()
	last := "no answer yet"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.tokens[AdminUser])
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, body)
		} else {
			last = err.Error()
		}
		select {
		case <-s.proc.exited:
			log := s.logTail()
			if strings.Contains(log, "address already in use") {
				return fmt.Errorf("%w: %s", errPortInUse, s.URL)
			}
			return fmt.Errorf("%w: process exited (%v); log:\n%s", ErrNotReady, s.proc.waitErr, log)
		case <-ctx.Done():
			return fmt.Errorf("%w within %s (last: %s); log:\n%s", ErrNotReady, timeout, last, s.logTail())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(s.LogFile)
	if err != nil {
		return err.Error()
	}
	return tail(string(b), 3000)
}

// Stop terminates the server (SIGTERM, then SIGKILL after 10s) and waits
// for it to exit. It is safe to call more than once.
func (s *Server) Stop() {
	if s == nil || s.proc == nil {
		return
	}
	p := s.proc
	p.stopOnce.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// PID is the process id of the running server, or 0 before Start
// succeeded. Harnesses that leave clusters running record it so that a
// later teardown can kill the server.
func (s *Server) PID() int {
	if s == nil || s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// ServiceAccountKeyFile is the private key that signs service-account
// tokens, which a controller manager needs too.
func (s *Server) ServiceAccountKeyFile() string { return filepath.Join(s.dir, "sa.key") }

// Token returns the bearer token of AdminUser or of one of Options.Users.
func (s *Server) Token(user string) string { return s.tokens[user] }

// UserConfig returns a client configuration that authenticates as user
// (AdminUser or one of Options.Users).
func (s *Server) UserConfig(user string) (*rest.Config, error) {
	tok, ok := s.tokens[user]
	if !ok {
		return nil, fmt.Errorf("no token for user %q", user)
	}
	c := rest.CopyConfig(s.Config)
	c.BearerToken = tok
	return c, nil
}

// WriteKubeconfig writes a kubeconfig file for user (AdminUser or one of
// Options.Users) to path, for daemons that take --kubeconfig.
func (s *Server) WriteKubeconfig(path, user string) error {
	c, err := s.UserConfig(user)
	if err != nil {
		return err
	}
	return WriteKubeconfig(path, c)
}

// WriteKubeconfig writes a kubeconfig file that reaches the server of c
// with c's bearer token and CA data.
func WriteKubeconfig(path string, c *rest.Config) error {
	kc := clientcmdv1.Config{
		Kind:       "Config",
		APIVersion: "v1",
		Clusters: []clientcmdv1.NamedCluster{{
			Name:    "test",
			Cluster: clientcmdv1.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData},
		}},
		AuthInfos: []clientcmdv1.NamedAuthInfo{{
			Name:     "test",
			AuthInfo: clientcmdv1.AuthInfo{Token: c.BearerToken},
		}},
		Contexts: []clientcmdv1.NamedContext{{
			Name:    "test",
			Context: clientcmdv1.Context{Cluster: "test", AuthInfo: "test"},
		}},
		CurrentContext: "test",
	}
	b, err := yaml.Marshal(kc)
	if err != nil {
		return fmt.Errorf("encode kubeconfig: %w", err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// writeFiles creates the token file and the service-account key pair.
func (s *Server) writeFiles(users []User) error {
	var tokens strings.Builder
	all := append([]User{{Name: AdminUser, Groups: []string{"system:masters"}}}, users...)
	for i, u := range all {
		tok, err := randomToken()
		if err != nil {
			return err
		}
		s.tokens[u.Name] = tok
		// token,user,uid,"group1,group2"
		fmt.Fprintf(&tokens, "%s,%s,uid-%d,%q\n", tok, u.Name, i, strings.Join(u.Groups, ","))
	}
	if err := os.WriteFile(filepath.Join(s.dir, "tokens.csv"), []byte(tokens.String()), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate service-account key: %w", err)
	}
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("encode service-account public key: %w", err)
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	if err := os.WriteFile(filepath.Join(s.dir, "sa.key"), priv, 0o600); err != nil {
		return fmt.Errorf("write service-account key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "sa.pub"), pub, 0o644); err != nil {
		return fmt.Errorf("write service-account public key: %w", err)
	}
	return nil
}

func randomToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

package installer

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// conflistTemplate is the template deploy/ ships, read from there so the
// test checks the real one.
const conflistTemplatePath = "../../deploy/cni/conflist.tmpl"

// host is a scratch directory standing in for a node: CNI bin and conf
// directories, a fake /proc/sys, and the sources an image would carry.
type host struct {
	binDir, confDir, procSys, pluginsDir, sourceBin string
	coil                                            []byte
}

func newHost(t *testing.T) *host {
	t.Helper()
	root := t.TempDir()
	h := &host{
		binDir:     filepath.Join(root, "host/opt/cni/bin"),
		confDir:    filepath.Join(root, "host/etc/cni/net.d"),
		procSys:    filepath.Join(root, "proc/sys"),
		pluginsDir: filepath.Join(root, "image/plugins"),
		sourceBin:  filepath.Join(root, "image/coil"),
		coil:       randomBytes(t, 256<<10),
	}
	for _, d := range []string{h.binDir, h.confDir, h.pluginsDir, filepath.Join(h.procSys, "net/ipv4"), filepath.Join(h.procSys, "net/ipv6/conf/all")} {
		mustMkdir(t, d)
	}
	mustWrite(t, filepath.Join(h.procSys, SysctlIPv4Forward), "0", 0o644)
	mustWrite(t, filepath.Join(h.procSys, SysctlIPv6Forward), "0", 0o644)
	mustWrite(t, h.sourceBin, string(h.coil), 0o700)
	mustWrite(t, filepath.Join(h.pluginsDir, "tuning"), "image tuning", 0o755)
	mustWrite(t, filepath.Join(h.pluginsDir, "portmap"), "image portmap", 0o755)
	return h
}

func (h *host) config(policy StalePolicy) InstallConfig {
	return InstallConfig{
		CNIBinDir:        h.binDir,
		CNIConfDir:       h.confDir,
		SourceBin:        h.sourceBin,
		PluginsDir:       h.pluginsDir,
		ConflistTemplate: conflistTemplatePath,
		ConflistName:     DefaultConflistName,
		CoildEndpoint:    "unix:///run/coil/coild.sock",
		Stale:            policy,
		ProcSys:          h.procSys,
		Now:              func() time.Time { return time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC) },
	}
}

func TestInstall(t *testing.T) {
	// Configuration files found on the node before the install, and which
	// of them each policy moves away. 10-calico sorts before 10-coil (and
	// would win); 99-old.json after it.
	existing := map[string]string{
		"05-cilium.conflist":  `{"name":"cilium"}`,
		"10-calico.conflist":  `{"name":"calico"}`,
		"99-old.json":         `{"name":"old"}`,
		"00-notes.txt":        "not a CNI configuration",
		".hidden.conf.tmp":    "not ours, not a CNI configuration",
		"calico-kubeconfig":   "other file",
		"multus.d/00-x.conf":  "in a subdirectory: never read by runtimes",
		"coil-backup/keep.md": "existing backup directory content",
	}
	tests := []struct {
		policy    StalePolicy
		wantMoved []string
	}{
		{StaleEarlier, []string{"05-cilium.conflist", "10-calico.conflist"}},
		{StaleAll, []string{"05-cilium.conflist", "10-calico.conflist", "99-old.json"}},
		{StaleKeep, nil},
	}
	for _, tc := range tests {
		t.Run(string(tc.policy), func(t *testing.T) {
			h := newHost(t)
			for name, content := range existing {
				mustMkdir(t, filepath.Dir(filepath.Join(h.confDir, name)))
				mustWrite(t, filepath.Join(h.confDir, name), content, 0o644)
			}
			// The host has its own portmap; the image's must not replace it.
			mustWrite(t, filepath.Join(h.binDir, "portmap"), "host portmap", 0o755)

			res, err := Install(h.config(tc.policy))
			if err != nil {
				t.Fatal(err)
			}

			// Binaries: coil identical and 0755, tuning from the image
			// (missing on the host), portmap the host's.
			checkFile(t, filepath.Join(h.binDir, "coil"), h.coil, 0o755)
			checkFile(t, filepath.Join(h.binDir, "tuning"), []byte("image tuning"), 0o755)
			checkFile(t, filepath.Join(h.binDir, "portmap"), []byte("host portmap"), 0o755)
			if want := []string{"coil", "tuning"}; !reflect.DeepEqual(sorted(res.Installed), want) {
				t.Errorf("Installed = %v, want %v", res.Installed, want)
			}
			if want := []string{"portmap"}; !reflect.DeepEqual(res.Kept, want) {
				t.Errorf("Kept = %v, want %v", res.Kept, want)
			}

			// The configuration list: JSON, coil + tuning + portmap, the
			// endpoint substituted.
			checkConflist(t, filepath.Join(h.confDir, DefaultConflistName), "unix:///run/coil/coild.sock")
			if !res.ConflistWritten {
				t.Error("ConflistWritten = false on the first run")
			}

			// Stale files: moved intact into the backup directory; the
			// others untouched.
			var moved []string
			for name := range res.BackedUp {
				moved = append(moved, name)
			}
			if !reflect.DeepEqual(sorted(moved), tc.wantMoved) {
				t.Errorf("moved %v, want %v", sorted(moved), tc.wantMoved)
			}
			for name, content := range existing {
				inBackup := filepath.Join(h.confDir, DefaultBackupDirName, name)
				if contains(tc.wantMoved, name) {
					checkMissing(t, filepath.Join(h.confDir, name))
					checkFile(t, inBackup, []byte(content), 0o644)
					if res.BackedUp[name] != inBackup {
						t.Errorf("BackedUp[%s] = %s, want %s", name, res.BackedUp[name], inBackup)
					}
				} else {
					checkFile(t, filepath.Join(h.confDir, name), []byte(content), 0o644)
				}
			}
			if got := cniConfigs(t, h.confDir); len(tc.wantMoved) > 0 && got[0] != DefaultConflistName {
				t.Errorf("the runtime would use %s, not Coil's configuration (files %v)", got[0], got)
			}

			// Forwarding.
			for _, s := range []string{SysctlIPv4Forward, SysctlIPv6Forward} {
				checkFile(t, filepath.Join(h.procSys, s), []byte("1"), 0o644)
			}

			// A second run changes nothing: same inodes, same times.
			before := statAll(t, h.binDir, h.confDir)
			res2, err := Install(h.config(tc.policy))
			if err != nil {
				t.Fatal(err)
			}
			if len(res2.Installed) != 0 || res2.ConflistWritten || len(res2.BackedUp) != 0 {
				t.Errorf("second run changed something: %+v", res2)
			}
			// tuning now exists on the node, so it counts as the host's.
			if !reflect.DeepEqual(res2.Unchanged, []string{"coil"}) || !reflect.DeepEqual(sorted(res2.Kept), []string{"portmap", "tuning"}) {
				t.Errorf("second run: Unchanged = %v, Kept = %v; want [coil], [portmap tuning]", res2.Unchanged, res2.Kept)
			}
			after := statAll(t, h.binDir, h.confDir)
			for path, st := range before {
				st2, ok := after[path]
				if !ok || !os.SameFile(st, st2) || !st.ModTime().Equal(st2.ModTime()) {
					t.Errorf("%s was replaced or touched by the second run", path)
				}
			}
			if len(after) != len(before) {
				t.Errorf("second run changed the set of files: %d before, %d after", len(before), len(after))
			}
		})
	}
}

func TestInstallUpgrade(t *testing.T) {
	h := newHost(t)
	cfg := h.config(StaleEarlier)
	if _, err := Install(cfg); err != nil {
		t.Fatal(err)
	}
	oldConf := filepath.Join(h.confDir, DefaultConflistName)
	oldConfStat := mustStat(t, oldConf)

	// The node runs the installed plugin (here a copy of sleep) while a
	// new version is installed: the rename replaces it without "text file
	// busy", and the running process is unaffected.
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	sleepBytes, err := os.ReadFile(sleepBin)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(h.binDir, "coil"), string(sleepBytes), 0o755)
	running := exec.Command(filepath.Join(h.binDir, "coil"), "30")
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { running.Process.Kill(); running.Wait() })

	newCoil := randomBytes(t, 64<<10)
	mustWrite(t, h.sourceBin, string(newCoil), 0o755)
	cfg.CoildEndpoint = "http://127.0.0.1:9383"
	res, err := Install(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.Installed, []string{"coil"}) || !res.ConflistWritten {
		t.Errorf("upgrade: %+v, want coil installed and the configuration list rewritten", res)
	}
	checkFile(t, filepath.Join(h.binDir, "coil"), newCoil, 0o755)
	checkConflist(t, oldConf, "http://127.0.0.1:9383")
	if os.SameFile(oldConfStat, mustStat(t, oldConf)) {
		t.Error("the configuration list was rewritten in place, not replaced by rename")
	}
	if err := running.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the plugin that was running when it was replaced died: %v", err)
	}
	// No temporary files are left behind.
	for _, dir := range []string{h.binDir, h.confDir} {
		for _, e := range mustReadDir(t, dir) {
			if strings.HasPrefix(e.Name(), tempPrefix) {
				t.Errorf("temporary file left: %s", filepath.Join(dir, e.Name()))
			}
		}
	}
}

func TestInstallBackupNamesNeverOverwrite(t *testing.T) {
	h := newHost(t)
	backup := filepath.Join(h.confDir, DefaultBackupDirName)
	mustMkdir(t, backup)
	mustWrite(t, filepath.Join(backup, "05-x.conf"), "first backup", 0o644)
	mustWrite(t, filepath.Join(backup, "05-x.conf.20261123T160000Z"), "second backup", 0o644)
	mustWrite(t, filepath.Join(h.confDir, "05-x.conf"), "third", 0o644)

	res, err := Install(h.config(StaleEarlier))
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(backup, "05-x.conf.20261123T160000Z.1")
	if res.BackedUp["05-x.conf"] != want {
		t.Errorf("backed up to %s, want %s", res.BackedUp["05-x.conf"], want)
	}
	checkFile(t, filepath.Join(backup, "05-x.conf"), []byte("first backup"), 0o644)
	checkFile(t, filepath.Join(backup, "05-x.conf.20261123T160000Z"), []byte("second backup"), 0o644)
	checkFile(t, want, []byte("third"), 0o644)
}

func TestInstallRemovesLeftovers(t *testing.T) {
	h := newHost(t)
	left := filepath.Join(h.binDir, tempPrefix+"coil-123.tmp")
	mustWrite(t, left, "half a binary", 0o600)
	foreign := filepath.Join(h.binDir, ".other-123.tmp")
	mustWrite(t, foreign, "someone else's", 0o600)
	if _, err := Install(h.config(StaleEarlier)); err != nil {
		t.Fatal(err)
	}
	checkMissing(t, left)
	checkFile(t, foreign, []byte("someone else's"), 0o600)
}

func TestInstallRefusesBadInput(t *testing.T) {
	tests := []struct {
		name     string
		template string
		mutate   func(*InstallConfig)
		wantErr  string
	}{
		{name: "not JSON", template: `{"name": "x", plugins: [}`, wantErr: "invalid"},
		{name: "no coil plugin", template: `{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"ptp"}]}`, wantErr: `no plugin of type "coil"`},
		{name: "unknown template field", template: `{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"coil","coild":"{{.Endpoint}}"}]}`, wantErr: "Endpoint"},
		{name: "template syntax", template: `{{.CoildEndpoint`, wantErr: "parse"},
		{name: "no plugins", template: `{"cniVersion":"1.1.0","name":"x","plugins":[]}`, wantErr: "invalid"},
		{name: "bad conflist name", template: "", mutate: func(c *InstallConfig) { c.ConflistName = "10-coil" }, wantErr: "must be a file name"},
		{name: "bad policy", template: "", mutate: func(c *InstallConfig) { c.Stale = "some" }, wantErr: "unknown stale"},
		{name: "missing source", template: "", mutate: func(c *InstallConfig) { c.SourceBin = "" }, wantErr: "no source binary"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t)
			cfg := h.config(StaleAll)
			if tc.template != "" {
				cfg.ConflistTemplate = filepath.Join(t.TempDir(), "tmpl")
				mustWrite(t, cfg.ConflistTemplate, tc.template, 0o644)
			}
			if tc.mutate != nil {
				tc.mutate(&cfg)
			}
			mustWrite(t, filepath.Join(h.confDir, "05-other.conflist"), "{}", 0o644)
			_, err := Install(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Install error = %v, want one containing %q", err, tc.wantErr)
			}
			// Nothing on the node changed.
			if got := mustReadDir(t, h.binDir); len(got) != 0 {
				t.Errorf("bin dir changed: %v", got)
			}
			checkMissing(t, filepath.Join(h.confDir, DefaultConflistName))
			checkFile(t, filepath.Join(h.confDir, "05-other.conflist"), []byte("{}"), 0o644)
			checkFile(t, filepath.Join(h.procSys, SysctlIPv4Forward), []byte("0"), 0o644)
		})
	}
}

func TestEnableForwardingFiles(t *testing.T) {
	tests := []struct {
		name    string
		files   []string
		ipv6    bool
		want    []string
		wantErr bool
	}{
		{name: "both", files: []string{SysctlIPv4Forward, SysctlIPv6Forward}, ipv6: true, want: []string{SysctlIPv4Forward, SysctlIPv6Forward}},
		{name: "IPv6 disabled in the kernel", files: []string{SysctlIPv4Forward}, ipv6: true, want: []string{SysctlIPv4Forward}},
		{name: "IPv6 not asked for", files: []string{SysctlIPv4Forward, SysctlIPv6Forward}, ipv6: false, want: []string{SysctlIPv4Forward}},
		{name: "wrong proc-sys", files: nil, ipv6: true, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				mustMkdir(t, filepath.Dir(filepath.Join(dir, f)))
				mustWrite(t, filepath.Join(dir, f), "0", 0o644)
			}
			got, err := EnableForwarding(dir, tc.ipv6)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("set %v, want %v", got, tc.want)
			}
			if tc.wantErr {
				// It never creates files under a wrong directory.
				if entries := mustReadDir(t, dir); len(entries) != 0 {
					t.Errorf("created %v", entries)
				}
			}
		})
	}
}

// TestForwardingInNetNS writes the real sysctls inside a fresh network
// namespace, where forwarding starts off, and checks that the root
// namespace is not touched.
func TestForwardingInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	rootBefore := readSysctls(t)
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close(); testutils.UnmountNS(netns) })

	h := newHost(t)
	cfg := h.config(StaleEarlier)
	cfg.ProcSys = "/proc/sys"
	err = netns.Do(func(ns.NetNS) error {
		if got := readSysctls(t); got[SysctlIPv4Forward] != "0" {
			t.Errorf("a new netns starts with forwarding %v; the test proves nothing", got)
		}
		res, err := Install(cfg)
		if err != nil {
			return err
		}
		if want := []string{SysctlIPv4Forward, SysctlIPv6Forward}; !reflect.DeepEqual(res.Sysctls, want) {
			t.Errorf("Sysctls = %v, want %v", res.Sysctls, want)
		}
		for name, v := range readSysctls(t) {
			if v != "1" {
				t.Errorf("inside the netns %s = %s, want 1", name, v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if after := readSysctls(t); !reflect.DeepEqual(after, rootBefore) {
		t.Errorf("root namespace changed: %v -> %v", rootBefore, after)
	}
}

func readSysctls(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, s := range []string{SysctlIPv4Forward, SysctlIPv6Forward} {
		b, err := os.ReadFile(filepath.Join("/proc/sys", s))
		if err != nil {
			t.Fatal(err)
		}
		out[s] = strings.TrimSpace(string(b))
	}
	return out
}

func TestParseStalePolicy(t *testing.T) {
	for _, s := range []string{"earlier", "all", "keep"} {
		if p, err := ParseStalePolicy(s); err != nil || string(p) != s {
			t.Errorf("ParseStalePolicy(%q) = %q, %v", s, p, err)
		}
	}
	for _, s := range []string{"", "ALL", "before"} {
		if _, err := ParseStalePolicy(s); err == nil {
			t.Errorf("ParseStalePolicy(%q) accepted", s)
		}
	}
}

// checkConflist parses the configuration list as JSON and checks the
// plugin chain and the substituted endpoint.
func checkConflist(t *testing.T, path, endpoint string) {
	t.Helper()
	st := mustStat(t, path)
	if st.Mode().Perm() != 0o644 {
		t.Errorf("%s mode %v, want 0644", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("%s is not JSON: %v\n%s", path, err, b)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p["type"].(string))
	}
	if want := []string{"coil", "tuning", "portmap"}; !reflect.DeepEqual(types, want) {
		t.Errorf("plugins %v, want %v", types, want)
	}
	if list.Name == "" || list.CNIVersion != "1.1.0" {
		t.Errorf("name %q, cniVersion %q", list.Name, list.CNIVersion)
	}
	if len(list.Plugins) > 0 && list.Plugins[0]["coild"] != endpoint {
		t.Errorf("coild endpoint %v, want %s", list.Plugins[0]["coild"], endpoint)
	}
	if len(list.Plugins) == 3 && list.Plugins[2]["backend"] != "nftables" {
		t.Errorf("portmap backend %v, want nftables", list.Plugins[2]["backend"])
	}
}

// cniConfigs lists the files a runtime would consider, in its order.
func cniConfigs(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, e := range mustReadDir(t, dir) {
		if !e.IsDir() && isCNIConfName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func statAll(t *testing.T, dirs ...string) map[string]fs.FileInfo {
	t.Helper()
	out := map[string]fs.FileInfo{}
	for _, d := range dirs {
		err := filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			st, err := os.Stat(p)
			out[p] = st
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func checkFile(t *testing.T, path string, want []byte, mode fs.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if st.Mode().Perm() != mode {
		t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), mode)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: content differs (%d bytes, want %d)", path, len(got), len(want))
	}
}

func checkMissing(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s exists (%v), want it gone", path, err)
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func mustStat(t *testing.T, path string) fs.FileInfo {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func mustReadDir(t *testing.T, dir string) []fs.DirEntry {
	t.Helper()
	e, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

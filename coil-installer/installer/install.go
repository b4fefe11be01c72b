// Package installer is the logic of coil-installer: Install prepares a node
// for Coil (forwarding, plugins, configuration list) and Untaint releases it
// to workloads once coild is ready, so that no pod lands on a node that
// cannot give it an address yet. See docs/setup.md#coil-installer.
package installer

import (
	"errors"
	"fmt"
	"github.com/coil-project/coil/coild/api"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// Defaults of InstallConfig, also used as the command's flag defaults.
const (
	DefaultCNIBinDir     = "/host/opt/cni/bin"
	DefaultCNIConfDir    = "/host/etc/cni/net.d"
	DefaultSourceBin     = "/usr/local/bin/coil"
	DefaultPluginsDir    = "/opt/coil/cni-plugins"
	DefaultConflistName  = "10-coil.conflist"
	DefaultProcSys       = "/proc/sys"
	DefaultCoildEndpoint = api.DefaultEndpoint
	// DefaultBackupDirName is the directory inside the CNI configuration
	// directory where moved-away files are kept. Container runtimes read
	// only the files directly in that directory, never subdirectories.
	DefaultBackupDirName = "coil-backup"
)

// PluginName is the file name of the Coil CNI plugin in the CNI bin
// directory; the "type" of the first plugin in the configuration list.
const PluginName = "coil"

// binMode is the mode of installed plugin binaries.
const binMode fs.FileMode = 0o755

// confMode is the mode of the installed configuration list.
const confMode fs.FileMode = 0o644

// cniConfExtensions are the file extensions containerd and CRI-O read as
// CNI network configurations, in lexical order of file name; the first
// file found wins.
var cniConfExtensions = []string{".conf", ".conflist", ".json"}

// StalePolicy says which other CNI configuration files Install moves into
// the backup directory.
type StalePolicy string

const (
	// StaleEarlier moves the files whose name sorts before Coil's: the
	// runtime uses the first file in lexical order, so these are the ones
	// that would be used instead of Coil's. Files after it are never used
	// while Coil's exists and are left alone (a meta plugin that must come
	// first, such as Multus' 00-multus.conf, needs StaleKeep).
	StaleEarlier StalePolicy = "earlier"
	// StaleAll moves every other CNI configuration file.
	StaleAll StalePolicy = "all"
	// StaleKeep moves nothing.
	StaleKeep StalePolicy = "keep"
)

// ParseStalePolicy checks a policy given on the command line.
func ParseStalePolicy(s string) (StalePolicy, error) {
	switch p := StalePolicy(s); p {
	case StaleEarlier, StaleAll, StaleKeep:
		return p, nil
	}
	return "", fmt.Errorf("unknown stale configuration policy %q (want %s, %s or %s)", s, StaleEarlier, StaleAll, StaleKeep)
}

// InstallConfig says where Install finds its sources and where the host's
// directories are mounted.
type InstallConfig struct {
	// CNIBinDir is the host's CNI plugin directory (/opt/cni/bin),
	// mounted into the container.
	CNIBinDir string
	// CNIConfDir is the host's CNI configuration directory
	// (/etc/cni/net.d), mounted into the container.
	CNIConfDir string
	// SourceBin is the coil plugin binary to install as CNIBinDir/coil.
	SourceBin string
	// PluginsDir holds further plugins (the reference tuning, portmap...)
	// that are installed only where CNIBinDir has no file of that name:
	// a host's own plugins are never replaced. Empty installs none.
	PluginsDir string
	// ConflistTemplate is a text/template of the configuration list; see
	// TemplateData for what it may refer to.
	ConflistTemplate string
	// ConflistName is the file name of the configuration list.
	ConflistName string
	// CoildEndpoint is given to the template as .CoildEndpoint.
	CoildEndpoint string
	// NodeName is given to the template as .NodeName.
	NodeName string
	// Stale says which other configuration files are moved away.
	Stale StalePolicy
	// BackupDir receives them; empty means CNIConfDir/coil-backup.
	BackupDir string
	// ProcSys is where sysctls are written (/proc/sys). /proc/sys/net
	// belongs to the network namespace of the writer: the host's, for a
	// container with host networking.
	ProcSys string
	// SkipIPv6 leaves IPv6 forwarding alone.
	SkipIPv6 bool
	// Logger receives one line per change; nil discards.
	Logger *slog.Logger
	// Now stamps backups whose name is taken; nil means time.Now.
	Now func() time.Time
}

// TemplateData is what a configuration list template can use.
type TemplateData struct {
	// CoildEndpoint is coild's REST endpoint as the plugin takes it
	// ("unix:///run/coild.sock" or "http://127.0.0.1:9383").
	CoildEndpoint string
	// NodeName is the name of the node being installed.
	NodeName string
}

// Result says what Install did; names are file names, sysctls paths
// relative to ProcSys.
type Result struct {
	// Installed lists binaries written (new or changed).
	Installed []string
	// Unchanged lists binaries already identical and left alone.
	Unchanged []string
	// Kept lists optional plugins not installed because the host has one.
	Kept []string
	// ConflistWritten is true when the configuration list was (re)written.
	ConflistWritten bool
	// BackedUp maps each moved configuration file to its path in the
	// backup directory.
	BackedUp map[string]string
	// Sysctls lists the sysctls set to 1.
	Sysctls []string
}

func (c *InstallConfig) validate() error {
	var missing []string
	for _, f := range []struct{ name, v string }{
		{"CNI bin directory", c.CNIBinDir},
		{"CNI configuration directory", c.CNIConfDir},
		{"source binary", c.SourceBin},
		{"configuration list template", c.ConflistTemplate},
		{"configuration list name", c.ConflistName},
		{"proc/sys directory", c.ProcSys},
	} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("install configuration incomplete: no %s", strings.Join(missing, ", "))
	}
	if !isCNIConfName(c.ConflistName) || strings.ContainsRune(c.ConflistName, '/') {
		return fmt.Errorf("configuration list name %q must be a file name ending in .conflist, .conf or .json", c.ConflistName)
	}
	if _, err := ParseStalePolicy(string(c.Stale)); err != nil {
		return err
	}
	return nil
}

// Install prepares the node: it renders the configuration list (nothing
// changes when that fails), then sets forwarding, binaries, configuration
// list and stale configurations, in that order, so the runtime never sees Coil's
// configuration before the plugin it names exists. It stops at the first
// error; what it did until then stays done, and running it again resumes.
func Install(cfg InstallConfig) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	res := &Result{BackedUp: map[string]string{}}

	// A broken template must fail before anything on the node changes.
	conf, err := RenderConflist(cfg.ConflistTemplate, TemplateData{CoildEndpoint: cfg.CoildEndpoint, NodeName: cfg.NodeName})
	if err != nil {
		return nil, err
	}

	sysctls, err := EnableForwarding(cfg.ProcSys, !cfg.SkipIPv6)
	res.Sysctls = sysctls
	if err != nil {
		return res, err
	}
	log.Info("forwarding enabled", "sysctls", sysctls)

	for _, dir := range []string{cfg.CNIBinDir, cfg.CNIConfDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return res, fmt.Errorf("create %s: %w", dir, err)
		}
		removed, err := removeTempFiles(dir)
		if err != nil {
			return res, err
		}
		if len(removed) > 0 {
			log.Info("removed leftovers of an interrupted run", "dir", dir, "files", removed)
		}
	}

	if err := installBinaries(&cfg, res, log); err != nil {
		return res, err
	}

	same, err := sameContent(filepath.Join(cfg.CNIConfDir, cfg.ConflistName), conf, confMode)
	if err != nil {
		return res, err
	}
	if !same {
		if err := writeFileAtomic(cfg.CNIConfDir, cfg.ConflistName, conf, confMode); err != nil {
			return res, fmt.Errorf("install configuration list: %w", err)
		}
		res.ConflistWritten = true
		log.Info("configuration list written", "file", filepath.Join(cfg.CNIConfDir, cfg.ConflistName))
	}

	if err := backupStale(&cfg, res, log); err != nil {
		return res, err
	}
	return res, nil
}

// installBinaries copies the coil plugin (always) and the optional
// plugins (where missing) into the CNI bin directory.
func installBinaries(cfg *InstallConfig, res *Result, log *slog.Logger) error {
	type bin struct {
		src, name string
		optional  bool
	}
	bins := []bin{{src: cfg.SourceBin, name: PluginName}}
	if cfg.PluginsDir != "" {
		entries, err := os.ReadDir(cfg.PluginsDir)
		if err != nil {
			return fmt.Errorf("read plugins directory: %w", err)
		}
		for _, e := range entries {
			if e.Type().IsRegular() && e.Name() != PluginName {
				bins = append(bins, bin{src: filepath.Join(cfg.PluginsDir, e.Name()), name: e.Name(), optional: true})
			}
		}
	}
	for _, b := range bins {
		target := filepath.Join(cfg.CNIBinDir, b.name)
		if b.optional {
			if _, err := os.Lstat(target); err == nil {
				res.Kept = append(res.Kept, b.name)
				continue
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("stat %s: %w", target, err)
			}
		}
		data, err := os.ReadFile(b.src)
		if err != nil {
			return fmt.Errorf("read plugin %s: %w", b.src, err)
		}
		same, err := sameContent(target, data, binMode)
		if err != nil {
			return err
		}
		if same {
			res.Unchanged = append(res.Unchanged, b.name)
			continue
		}
		if err := writeFileAtomic(cfg.CNIBinDir, b.name, data, binMode); err != nil {
			return fmt.Errorf("install plugin %s: %w", b.name, err)
		}
		res.Installed = append(res.Installed, b.name)
		log.Info("plugin installed", "file", target, "bytes", len(data))
	}
	return nil
}

// RenderConflist executes the template file at path and checks that the
// result is a CNI configuration list whose plugins include coil.
func RenderConflist(path string, data TemplateData) ([]byte, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read configuration list template: %w", err)
	}
	tmpl, err := template.New(filepath.Base(path)).Option("missingkey=error").Parse(string(text))
	if err != nil {
		return nil, fmt.Errorf("parse configuration list template %s: %w", path, err)
	}
	var out strings.Builder
	if err := tmpl.Execute(&out, data); err != nil {
		return nil, fmt.Errorf("render configuration list template %s: %w", path, err)
	}
	conf := []byte(out.String())
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return nil, fmt.Errorf("configuration list rendered from %s is invalid: %w", path, err)
	}
	hasCoil := false
	for _, p := range list.Plugins {
		if p.Network.Type == PluginName {
			hasCoil = true
		}
	}
	if !hasCoil {
		return nil, fmt.Errorf("configuration list rendered from %s has no plugin of type %q", path, PluginName)
	}
	return conf, nil
}

// isCNIConfName reports whether a runtime would read a file of this name
// as a network configuration.
func isCNIConfName(name string) bool {
	for _, ext := range cniConfExtensions {
		if filepath.Ext(name) == ext {
			return true
		}
	}
	return false
}

// StaleConfigs returns the files in confDir that policy moves away, given
// Coil's configuration list is named ours, sorted by name.
func StaleConfigs(confDir, ours string, policy StalePolicy) ([]string, error) {
	if policy == StaleKeep {
		return nil, nil
	}
	entries, err := os.ReadDir(confDir)
	if err != nil {
		return nil, fmt.Errorf("read CNI configuration directory: %w", err)
	}
	var stale []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || n == ours || !isCNIConfName(n) {
			continue
		}
		if policy == StaleEarlier && n > ours {
			continue
		}
		stale = append(stale, n)
	}
	sort.Strings(stale)
	return stale, nil
}

// backupStale moves the stale configuration files into the backup
// directory. A name already taken there gets a time stamp, so an older
// backup is never overwritten.
func backupStale(cfg *InstallConfig, res *Result, log *slog.Logger) error {
	stale, err := StaleConfigs(cfg.CNIConfDir, cfg.ConflistName, cfg.Stale)
	if err != nil || len(stale) == 0 {
		return err
	}
	backup := cfg.BackupDir
	if backup == "" {
		backup = filepath.Join(cfg.CNIConfDir, DefaultBackupDirName)
	}
	if err := os.MkdirAll(backup, 0o700); err != nil {
		return fmt.Errorf("create backup directory: %w", err)
	}
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	for _, n := range stale {
		dst, err := freeName(backup, n, now().UTC().Format("20060102T150405Z"))
		if err != nil {
			return err
		}
		src := filepath.Join(cfg.CNIConfDir, n)
		if err := os.Rename(src, dst); err != nil {
			return fmt.Errorf("move stale CNI configuration %s to %s: %w", src, dst, err)
		}
		res.BackedUp[n] = dst
		log.Info("stale CNI configuration moved away", "file", src, "backup", dst)
	}
	if err := syncDir(backup); err != nil {
		return err
	}
	return syncDir(cfg.CNIConfDir)
}

// freeName returns dir/name, or dir/name.<stamp>[.<n>] when that is taken.
func freeName(dir, name, stamp string) (string, error) {
	cand := filepath.Join(dir, name)
	for i := 0; i < 1000; i++ {
		_, err := os.Lstat(cand)
		if errors.Is(err, fs.ErrNotExist) {
			return cand, nil
		}
		if err != nil {
			return "", fmt.Errorf("stat %s: %w", cand, err)
		}
		cand = filepath.Join(dir, name+"."+stamp)
		if i > 0 {
			cand = fmt.Sprintf("%s.%d", cand, i)
		}
	}
	return "", fmt.Errorf("no free backup name for %s in %s", name, dir)
}

// Sysctls written by EnableForwarding, relative to /proc/sys.
const (
	SysctlIPv4Forward = "net/ipv4/ip_forward"
	SysctlIPv6Forward = "net/ipv6/conf/all/forwarding"
)

// EnableForwarding sets IPv4 (and, with ipv6, IPv6) forwarding to 1 under
// procSys, in the network namespace of the calling thread. IPv6 is skipped
// when the kernel has it disabled (the file does not exist). It returns
// the sysctls it set.
func EnableForwarding(procSys string, ipv6 bool) ([]string, error) {
	names := []string{SysctlIPv4Forward}
	if ipv6 {
		names = append(names, SysctlIPv6Forward)
	}
	var set []string
	for _, n := range names {
		p := filepath.Join(procSys, n)
		err := writeSysctl(p, "1")
		if n == SysctlIPv6Forward && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return set, fmt.Errorf("enable forwarding (%s): %w", p, err)
		}
		set = append(set, n)
	}
	return set, nil
}

// writeSysctl writes value to the existing file p; it never creates one,
// so a wrong --proc-sys fails instead of filling a directory.
func writeSysctl(p, value string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

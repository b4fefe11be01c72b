// Package image builds Coil's runtime image and the sandbox ("pause") image
// the test nodes use, without a Docker engine: static binaries compiled with
// the go command, laid into layers with go-containerregistry, written as
// tarballs that `docker load`, `ctr images import` and `crane push` read.
//
// The runtime image holds what the Dockerfile's final stage holds (Files
// lists it; a test compares it with the Dockerfile) on top of a base layer
// standing in for distroless/static, which cannot be pulled here: /etc/passwd
// and /etc/group with root and nobody (65534, the user the manifests run the
// unprivileged containers as), /etc/nsswitch.conf, /root and /tmp. No CA
// certificates: the binaries dial TLS only to etcd with the CA the manifests
// mount and to the API server with the service account's CA.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Default names, the ones `make image` uses.
const (
	// DefaultImage is the Makefile's IMAGE and the manifests' image.
	DefaultImage = "ghcr.io/coil-project/coil:dev"
	// DefaultPauseImage names the sandbox image. The registry coil.local
	// does not exist: the image is only ever imported, and a runtime
	// told to pull it fails at once rather than fetching another image.
	DefaultPauseImage = "coil.local/pause:3.10"
)

// Binaries are Coil's commands, each a directory at the module root. The
// image holds them as links in /usr/local/bin to the one executable
// Hypercoil, which runs the command it is called as; all but Plugin.
var Binaries = []string{"coil", "coild", "coilctl", "coil-controller", "coil-installer", "coil-egress"}

// Plugin is the CNI plugin, which the image holds as its own small
// executable rather than a link: coil-installer copies it to every node,
// and the runtime executes it twice per pod (ADD, DEL). hypercoil links
// the whole of Coil, client-go included, whose start-up (about 7 ms more
// per exec on an idle machine, 46 MB resident instead of 8 MB, measured
// with CNI_COMMAND=VERSION) would be added to every ADD and DEL.
const Plugin = "coil"

// Hypercoil is the one executable of the image (a directory at the module
// root), in /usr/local/bin.
const Hypercoil = "hypercoil"

// PluginsModule is the module of the reference CNI plugins; the image has
// them at the version go.mod requires.
const PluginsModule = "github.com/containernetworking/plugins"

// Plugins are the reference CNI plugins the default configuration list
// chains (coil-installer copies them to nodes that lack them), by package
// path inside PluginsModule, in /opt/coil/cni-plugins in the image.
var Plugins = []string{"plugins/meta/tuning", "plugins/meta/portmap", "plugins/meta/bandwidth", "plugins/main/loopback"}

// Image directories of the binaries.
const (
	BinDir     = "/usr/local/bin"
	PluginsDir = "/opt/coil/cni-plugins" // coil-installer's default --plugins-dir
)

// Env is the runtime image's environment: the manifests name the commands
// without a directory.
var Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// User is the runtime image's default user: root, as with distroless/static.
// coild and the installer need it; the manifests run the other containers
// as 65534.
const User = "0:0"

// PauseUser is the sandbox image's user, as in the upstream pause image.
const PauseUser = "65535:65535"

// PausePath is the sandbox binary in its image, and its entrypoint.
const PausePath = "/pause"

// File is one file of an image: Src relative to the build output directory
// (where Compile writes), Dst its absolute path in the image.
type File struct {
	Src, Dst string
}

// Link is a symbolic link of an image: Dst its absolute path, Target what
// it points to (relative to Dst's directory).
type Link struct {
	Dst, Target string
}

// Files lists the runtime image's executables, each with where Compile
// writes it (bin/hypercoil, plugins/NAME).
func Files() []File {
	files := []File{
		{Src: path.Join("bin", Hypercoil), Dst: path.Join(BinDir, Hypercoil)},
		{Src: path.Join("bin", Plugin), Dst: path.Join(BinDir, Plugin)},
	}
	for _, p := range Plugins {
		b := path.Base(p)
		files = append(files, File{Src: path.Join("plugins", b), Dst: path.Join(PluginsDir, b)})
	}
	return files
}

// Links lists the runtime image's commands but the plugin: each a link in
// BinDir to Hypercoil, so that the manifests' commands find them by their
// names.
func Links() []Link {
	var links []Link
	for _, b := range Binaries {
		if b != Plugin {
			links = append(links, Link{Dst: path.Join(BinDir, b), Target: Hypercoil})
		}
	}
	return links
}

// PauseFile is the sandbox image's only file.
func PauseFile() File { return File{Src: path.Join("bin", "pause"), Dst: PausePath} }

// epoch is the time of every file and of the images' creation, so that the
// same binaries give the same image digest.
var epoch = time.Unix(0, 0).UTC()

// Coil assembles the runtime image for linux/arch from the binaries under
// dir (as Files names them): the base layer, then the binaries and the
// command links.
func Coil(dir, arch string) (v1.Image, error) {
	base, err := layer(baseEntries())
	if err != nil {
		return nil, err
	}
	var entries []entry
	for _, f := range Files() {
		e, err := fileEntry(dir, f)
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	for _, l := range Links() {
		entries = append(entries, entry{name: l.Dst, mode: 0o777, link: l.Target})
	}
	bins, err := layer(withParents(entries))
	if err != nil {
		return nil, err
	}
	return assemble(arch, v1.Config{Env: Env, User: User, WorkingDir: "/"}, base, bins)
}

// Pause assembles the sandbox image for linux/arch from the pause binary
// under dir (PauseFile).
func Pause(dir, arch string) (v1.Image, error) {
	e, err := fileEntry(dir, PauseFile())
	if err != nil {
		return nil, err
	}
	l, err := layer([]entry{e})
	if err != nil {
		return nil, err
	}
	return assemble(arch, v1.Config{Entrypoint: []string{PausePath}, User: PauseUser, WorkingDir: "/"}, l)
}

func assemble(arch string, cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		Config:       cfg,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{Layer: l, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "coil internal/image"}}
	}
	return mutate.Append(img, adds...)
}

// Write writes img as a tarball at file, tagged ref (docker's format, which
// docker load, ctr images import and crane push read).
func Write(file, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	// Written next to the target and renamed: a failed build leaves no
	// half tarball behind for ctr to choke on.
	tmp := file + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, file)
}

// entry is one member of a layer's tar stream.
type entry struct {
	name string // absolute path in the image
	mode int64  // permission bits, with sticky where wanted
	dir  bool
	link string // target of a symbolic link
	data []byte
}

func fileEntry(dir string, f File) (entry, error) {
	data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Src)))
	if err != nil {
		return entry{}, err
	}
	return entry{name: f.Dst, mode: 0o755, data: data}, nil
}

// baseEntries is what the binaries need of distroless/static.
func baseEntries() []entry {
	return withParents([]entry{
		{name: "/etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
		{name: "/etc/group", mode: 0o644, data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{name: "/etc/nsswitch.conf", mode: 0o644, data: []byte("hosts: files dns\n")},
		{name: "/root", mode: 0o700, dir: true},
		{name: "/tmp", mode: 0o1777, dir: true},
	})
}

// withParents adds the directories leading to each entry (0755) that are not
// already there, parents first, and sorts the lot.
func withParents(entries []entry) []entry {
	have := map[string]bool{}
	for _, e := range entries {
		have[e.name] = true
	}
	out := append([]entry(nil), entries...)
	for _, e := range entries {
		for d := path.Dir(e.name); d != "/"; d = path.Dir(d) {
			if !have[d] {
				have[d] = true
				out = append(out, entry{name: d, mode: 0o755, dir: true})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// layer writes entries, owned by root, into a gzip-compressed layer.
func layer(entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name[1:], // relative, as docker writes layers
			Mode:    e.mode,
			ModTime: epoch,
		}
		switch {
		case e.dir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}

package image

import (
	"archive/tar"
	"errors"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// dockerfile is the Dockerfile, split into its stages.
type dockerfile struct {
	stages []stage
}

type stage struct {
	from, name string
	runs       []string
	copies     [][]string // COPY's words after the instruction
	// links are the symbolic links the RUN lines make (ln -s), by path,
	// filled in by outputs.
	links map[string]string
}

// parseDockerfile reads the instructions of path: lines joined at trailing
// backslashes, comments dropped.
func parseDockerfile(t *testing.T, file string) dockerfile {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var df dockerfile
	var cur strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		instr := strings.Fields(cur.String())
		cur.Reset()
		if len(instr) == 0 {
			continue
		}
		switch strings.ToUpper(instr[0]) {
		case "FROM":
			st := stage{from: instr[1], links: map[string]string{}}
			if len(instr) == 4 && strings.EqualFold(instr[2], "AS") {
				st.name = instr[3]
			}
			df.stages = append(df.stages, st)
		case "RUN":
			df.stages[len(df.stages)-1].runs = append(df.stages[len(df.stages)-1].runs, strings.Join(instr[1:], " "))
		case "COPY":
			df.stages[len(df.stages)-1].copies = append(df.stages[len(df.stages)-1].copies, instr[1:])
		}
	}
	return df
}

var (
	goBuildOut = regexp.MustCompile(`go build .*-o (\S+)((?: \./\S+)+)`)
	goBinDir   = regexp.MustCompile(`GOBIN=(\S+)`)
	goInstall  = regexp.MustCompile(`(\S+)@"?\$version"?`)
	lnSymlink  = regexp.MustCompile(`ln -s (\S+) (\S+)`)
)

// outputs lists, by directory, what the RUN lines of a build stage write: the
// binaries of `go build -o DIR/ ./pkg...` and of `GOBIN=DIR ... go install
// pkg@"$version"...`.
func (s stage) outputs(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, run := range s.runs {
		if m := goBuildOut.FindStringSubmatch(run); m != nil {
			dir := path.Clean(m[1])
			for _, pkg := range strings.Fields(m[2]) {
				out[dir] = append(out[dir], path.Base(pkg))
			}
		}
		for _, m := range lnSymlink.FindAllStringSubmatch(run, -1) {
			dir := path.Dir(path.Clean(m[2]))
			out[dir] = append(out[dir], path.Base(m[2]))
			s.links[path.Clean(m[2])] = m[1]
		}
		if strings.Contains(run, "go install") {
			m := goBinDir.FindStringSubmatch(run)
			if m == nil {
				t.Fatalf("go install without GOBIN in %q", run)
			}
			dir := path.Clean(m[1])
			for _, m := range goInstall.FindAllStringSubmatch(run, -1) {
				out[dir] = append(out[dir], path.Base(m[1]))
			}
		}
	}
	return out
}

// dockerfileFiles is what the Dockerfile's final stage copies from its build
// stages, as paths in the image, and which of them are links to what.
func dockerfileFiles(t *testing.T) ([]string, map[string]string) {
	t.Helper()
	df := parseDockerfile(t, "../../Dockerfile")
	if len(df.stages) < 2 {
		t.Fatalf("the Dockerfile has %d stages, want a build stage and a final one", len(df.stages))
	}
	final := df.stages[len(df.stages)-1]
	var files []string
	links := map[string]string{}
	for _, c := range final.copies {
		from, ok := strings.CutPrefix(c[0], "--from=")
		if !ok || len(c) != 3 {
			t.Fatalf("final stage: COPY %s: want COPY --from=STAGE SRC DST", strings.Join(c, " "))
		}
		i := slices.IndexFunc(df.stages, func(s stage) bool { return s.name == from })
		if i < 0 {
			t.Fatalf("COPY --from=%s: no such stage", from)
		}
		outs := df.stages[i].outputs(t)[path.Clean(c[1])]
		if len(outs) == 0 {
			t.Fatalf("COPY %s: stage %s writes nothing there", strings.Join(c, " "), from)
		}
		for _, b := range outs {
			files = append(files, path.Join(c[2], b))
			if target, ok := df.stages[i].links[path.Join(path.Clean(c[1]), b)]; ok {
				links[path.Join(c[2], b)] = target
			}
		}
	}
	sort.Strings(files)
	return files, links
}

// TestDockerfileBuildFlags: the Dockerfile builds static, stripped binaries
// like Compiler.
func TestDockerfileBuildFlags(t *testing.T) {
	df := parseDockerfile(t, "../../Dockerfile")
	build := df.stages[0]
	data, _ := os.ReadFile("../../Dockerfile")
	for _, want := range []string{"CGO_ENABLED=0", "GOFLAGS=-trimpath"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the Dockerfile does not set %s", want)
		}
	}
	n := 0
	for _, run := range build.runs {
		if strings.Contains(run, "go build") || strings.Contains(run, "go install") {
			n++
			if !strings.Contains(run, `-ldflags="-s -w"`) {
				t.Errorf("without -ldflags=\"-s -w\": %s", run)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d go build/install lines in the build stage, want 2", n)
	}
}

// stubs writes a small file wherever Compiler would write a binary.
func stubs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range append(Files(), PauseFile()) {
		p := filepath.Join(dir, filepath.FromSlash(f.Src))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("stub "+f.Src), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// member is one tar member of a layer.
type member struct {
	mode     int64
	typeflag byte
	linkname string
	uid, gid int
	data     string
}

// layerContents reads each layer of img.
func layerContents(t *testing.T, img v1.Image) []map[string]member {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]member
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]member{}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			m["/"+strings.TrimSuffix(h.Name, "/")] = member{mode: h.Mode, typeflag: h.Typeflag, linkname: h.Linkname, uid: h.Uid, gid: h.Gid, data: string(data)}
		}
		rc.Close()
		out = append(out, m)
	}
	return out
}

// buildStub writes the runtime image made of stubs and reads it back.
func buildStub(t *testing.T) v1.Image {
	t.Helper()
	img, err := Coil(stubs(t), "amd64")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "coil-image.tar")
	if err := Write(file, DefaultImage, img); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := tarball.ImageFromPath(file, &tag)
	if err != nil {
		t.Fatal(err)
	}
	// Digests and diff IDs agree with the blobs, as a registry checks.
	if err := validate.Image(loaded); err != nil {
		t.Fatal(err)
	}
	return loaded
}

// TestSameFilesAsDockerfile: the image `make image` writes holds, besides
// its base layer, exactly the files and links the Dockerfile's final stage
// copies: hypercoil once, a link to it per command but the CNI plugin,
// the CNI plugin as its own file, the reference plugins.
func TestSameFilesAsDockerfile(t *testing.T) {
	want, wantLinks := dockerfileFiles(t)
	var listed []string
	for _, f := range Files() {
		listed = append(listed, f.Dst)
	}
	listedLinks := map[string]string{}
	for _, l := range Links() {
		listed = append(listed, l.Dst)
		listedLinks[l.Dst] = l.Target
	}
	sort.Strings(listed)
	if !slices.Equal(listed, want) {
		t.Errorf("Files() and Links():\n%v\nthe Dockerfile:\n%v", listed, want)
	}
	if !maps.Equal(listedLinks, wantLinks) {
		t.Errorf("Links(): %v\nthe Dockerfile: %v", listedLinks, wantLinks)
	}
	for _, b := range Binaries {
		switch target, isLink := listedLinks[path.Join(BinDir, b)]; {
		case b == Plugin && isLink:
			t.Errorf("the CNI plugin %s is a link to %s, want its own small file", b, target)
		case b != Plugin && target != Hypercoil:
			t.Errorf("command %s is not a link to %s", b, Hypercoil)
		}
	}

	layers := layerContents(t, buildStub(t))
	if len(layers) != 2 {
		t.Fatalf("%d layers, want 2 (base, binaries)", len(layers))
	}
	var got []string
	gotLinks := map[string]string{}
	for p, m := range layers[1] {
		switch m.typeflag {
		case tar.TypeReg:
			got = append(got, p)
			if m.mode != 0o755 {
				t.Errorf("%s: mode %o, want 755", p, m.mode)
			}
		case tar.TypeSymlink:
			got = append(got, p)
			gotLinks[p] = m.linkname
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Errorf("binaries layer:\n%v\nthe Dockerfile:\n%v", got, want)
	}
	if !maps.Equal(gotLinks, wantLinks) {
		t.Errorf("links in the layer: %v\nthe Dockerfile: %v", gotLinks, wantLinks)
	}
	for _, f := range Files() {
		if got := layers[1][f.Dst].data; got != "stub "+f.Src {
			t.Errorf("%s holds %q, want the stub %s", f.Dst, got, f.Src)
		}
	}
}

// TestImageConfig: the tarball loads back with the name, platform, user and
// environment the builder set, and the base layer gives user 65534 a name,
// /tmp and root-owned files.
func TestImageConfig(t *testing.T) {
	img := buildStub(t)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
	}
	if cfg.Config.User != "0:0" {
		t.Errorf("user %q, want 0:0", cfg.Config.User)
	}
	if !slices.Contains(cfg.Config.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") {
		t.Errorf("env %v: no PATH with /usr/local/bin", cfg.Config.Env)
	}
	if len(cfg.Config.Entrypoint) != 0 || len(cfg.Config.Cmd) != 0 {
		t.Errorf("entrypoint %v, cmd %v: the manifests set the command", cfg.Config.Entrypoint, cfg.Config.Cmd)
	}

	base := layerContents(t, img)[0]
	for p, want := range map[string]string{
		"/etc/passwd": "nobody:x:65534:65534:",
		"/etc/group":  "nobody:x:65534:",
	} {
		if !strings.Contains(base[p].data, want) {
			t.Errorf("%s: %q lacks %q", p, base[p].data, want)
		}
	}
	if m := base["/tmp"]; m.typeflag != tar.TypeDir || m.mode != 0o1777 {
		t.Errorf("/tmp: type %c mode %o, want a directory 1777", m.typeflag, m.mode)
	}
	for _, layer := range layerContents(t, img) {
		for p, m := range layer {
			if m.uid != 0 || m.gid != 0 {
				t.Errorf("%s owned by %d:%d", p, m.uid, m.gid)
			}
		}
	}

	// The same binaries give the same image.
	again, err := Coil(stubs(t), "amd64")
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("digest %s, then %s from the same files", d1, d2)
	}
}

// TestPauseImage: one file, /pause, the entrypoint, run as 65535.
func TestPauseImage(t *testing.T) {
	img, err := Pause(stubs(t), "arm64")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "pause-image.tar")
	if err := Write(file, DefaultPauseImage, img); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(DefaultPauseImage)
	loaded, err := tarball.ImageFromPath(file, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := loaded.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/pause"}) || cfg.Config.User != "65535:65535" || cfg.Architecture != "arm64" {
		t.Errorf("config: entrypoint %v user %q arch %s", cfg.Config.Entrypoint, cfg.Config.User, cfg.Architecture)
	}
	layers := layerContents(t, loaded)
	if len(layers) != 1 || len(layers[0]) != 1 || layers[0]["/pause"].mode != 0o755 {
		t.Errorf("layers %v, want /pause alone", layers)
	}
}

// TestMakefileBinaries: `make build` and the image build the same
// commands, so a command added to one is not missing from the other.
func TestMakefileBinaries(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, value, ok := strings.Cut(line, ":=")
		if !ok || strings.TrimSpace(name) != "BINARIES" {
			continue
		}
		if got, want := strings.Fields(value), append(slices.Clone(Binaries), Hypercoil); !slices.Equal(got, want) {
			t.Errorf("Makefile BINARIES = %v, want image.Binaries and %s: %v", got, Hypercoil, want)
		}
		return
	}
	t.Fatal("no BINARIES line in the Makefile")
}

package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// Compiler runs the go command the way the Dockerfile's build stage does:
// static binaries (CGO_ENABLED=0), -trimpath, -ldflags="-s -w", for linux.
type Compiler struct {
	Go   string // the go command; "go" if empty
	Root string // the module's root directory
	Arch string // GOARCH of the binaries
}

// PausePackage is the sandbox binary's package in this module.
const PausePackage = "./internal/image/pause"

var buildFlags = []string{"-trimpath", "-ldflags=-s -w"}

// Coil writes the runtime image's binaries under out, where Files says:
// hypercoil (every Coil command) and the CNI plugin coil into out/bin, the
// reference plugins into out/plugins.
func (c Compiler) Coil(ctx context.Context, out string) error {
	for _, f := range Files()[:2] {
		bin := filepath.Join(out, filepath.FromSlash(f.Src))
		if err := c.run(ctx, nil, append(append([]string{"build"}, buildFlags...), "-o", bin, "./"+path.Base(f.Src))...); err != nil {
			return err
		}
	}
	return c.plugins(ctx, filepath.Join(out, "plugins"))
}

// Command builds one command of this module (pkg, e.g. "./coil") into the
// file out the way the image's binaries are built, so that what a benchmark
// or test runs starts as fast as what a node runs.
func (c Compiler) Command(ctx context.Context, pkg, out string) error {
	return c.run(ctx, nil, append(append([]string{"build"}, buildFlags...), "-o", out, pkg)...)
}

// Pause writes the sandbox binary under out, where PauseFile says.
func (c Compiler) Pause(ctx context.Context, out string) error {
	return c.run(ctx, nil, append(append([]string{"build"}, buildFlags...), "-o", filepath.Join(out, filepath.FromSlash(PauseFile().Src)), PausePackage)...)
}

// plugins installs the reference plugins at the version go.mod requires.
// They are not built through this module, which does not require all their
// dependencies, but with `go install module/pkg@version` as in the
// Dockerfile, into a scratch GOPATH (go install refuses GOBIN when cross
// compiling; the module cache stays the usual one).
func (c Compiler) plugins(ctx context.Context, dir string) error {
	version, err := c.output(ctx, "list", "-m", "-f", "{{.Version}}", PluginsModule)
	if err != nil {
		return err
	}
	modCache, err := c.output(ctx, "env", "GOMODCACHE")
	if err != nil {
		return err
	}
	gopath, err := os.MkdirTemp("", "coil-image-gopath-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(gopath)
	args := append([]string{"install"}, buildFlags...)
	for _, p := range Plugins {
		args = append(args, PluginsModule+"/"+p+"@"+version)
	}
	env := []string{"GOPATH=" + gopath, "GOBIN=", "GOMODCACHE=" + modCache, "GOFLAGS=-mod=mod"}
	if err := c.run(ctx, env, args...); err != nil {
		return err
	}
	installed := filepath.Join(gopath, "bin")
	if hostArch, err := c.output(ctx, "env", "GOHOSTARCH"); err != nil {
		return err
	} else if hostArch != c.arch() {
		installed = filepath.Join(installed, "linux_"+c.arch())
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, p := range Plugins {
		b := path.Base(p)
		data, err := os.ReadFile(filepath.Join(installed, b))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, b), data, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (c Compiler) arch() string {
	if c.Arch == "" {
		return "amd64"
	}
	return c.Arch
}

func (c Compiler) cmd(ctx context.Context, env []string, args ...string) *exec.Cmd {
	goCmd := c.Go
	if goCmd == "" {
		goCmd = "go"
	}
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = c.Root
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+c.arch()), env...)
	return cmd
}

func (c Compiler) run(ctx context.Context, env []string, args ...string) error {
	cmd := c.cmd(ctx, env, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (c Compiler) output(ctx context.Context, args ...string) (string, error) {
	cmd := c.cmd(ctx, nil, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

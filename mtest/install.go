package mtest

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
)

// RepoRoot is the checkout the suite runs from.
func RepoRoot() string { return repoRoot() }

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..")
}

// docBlock is one fenced block of a Markdown page, with the heading of the
// section (##) it is in.
type docBlock struct {
	section, lang, text string
}

// docBlocks returns the fenced blocks of a Markdown page in order.
func docBlocks(md string) []docBlock {
	var blocks []docBlock
	section := ""
	var cur *docBlock
	for _, line := range strings.Split(md, "\n") {
		switch {
		case cur != nil && strings.HasPrefix(line, "```"):
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case strings.HasPrefix(line, "```"):
			cur = &docBlock{section: section, lang: strings.TrimPrefix(line, "```")}
		case strings.HasPrefix(line, "## "):
			section = strings.TrimPrefix(line, "## ")
		}
	}
	return blocks
}

// consoleCommands returns the commands of a console block: lines after
// "$ ", continued by a trailing backslash, without a trailing comment.
func consoleCommands(block string) [][]string {
	var cmds [][]string
	var cur string
	inCmd := false
	for _, line := range strings.Split(block, "\n") {
		switch {
		case inCmd:
			cur += " " + strings.TrimSpace(line)
		case strings.HasPrefix(line, "$ "):
			cur, inCmd = strings.TrimPrefix(line, "$ "), true
		default:
			continue
		}
		if strings.HasSuffix(cur, "\\") {
			cur = strings.TrimSuffix(cur, "\\")
			continue
		}
		inCmd = false
		if i := strings.Index(cur, " #"); i >= 0 {
			cur = cur[:i]
		}
		cmds = append(cmds, strings.Fields(cur))
	}
	return cmds
}

// SetupStep is one command of docs/setup.md that InstallCoil ran.
type SetupStep struct {
	Section string
	Command []string
	Output  string
}

// installSections are the sections of docs/setup.md whose kubectl
// commands install Coil, in order.
var installSections = regexp.MustCompile(`^(3|4|5|6)\. `)

// InstallCoil installs Coil on a real-node cluster the way docs/setup.md
// tells users to: it creates the pools with the page's coilctl command,
// writes the page's overlay (pointed at this cluster's etcd and image, with
// the --flat-l2 patch of docs/usage.md) beside a copy of deploy/, and runs
// every kubectl command of steps 4 to 6 as written, rollout waits
// included. It returns the commands and what they printed.
func (c *Cluster) InstallCoil(ctx context.Context) ([]SetupStep, error) {
	root := repoRoot()
	setup, err := os.ReadFile(filepath.Join(root, "docs", "setup.md"))
	if err != nil {
		return nil, err
	}
	usage, err := os.ReadFile(filepath.Join(root, "docs", "usage.md"))
	if err != nil {
		return nil, err
	}
	work := filepath.Join(c.Dir, "install")
	if err := copyTree(filepath.Join(root, "deploy"), filepath.Join(work, "coil", "deploy")); err != nil {
		return nil, fmt.Errorf("copy deploy/: %w", err)
	}
	for dst, src := range map[string]string{"ca.crt": c.etcdCerts.CA, "coil.crt": c.etcdCerts.ClientCert, "coil.key": c.etcdCerts.ClientKey} {
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(work, dst), data, 0o600); err != nil {
			return nil, err
		}
	}
	overlay, err := c.overlayFromDocs(string(setup), string(usage))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(work, "my-coil"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(work, "my-coil", "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		return nil, err
	}

	var steps []SetupStep
	for _, b := range docBlocks(string(setup)) {
		if b.lang != "console" || !installSections.MatchString(b.section) {
			continue
		}
		for _, cmd := range consoleCommands(b.text) {
			step := SetupStep{Section: b.section, Command: cmd}
			switch {
			case len(cmd) > 2 && cmd[0] == "coilctl" && cmd[1] == "pool" && cmd[2] == "create":
				step.Output, err = c.Coilctl(cmd[1:]...)
			case len(cmd) > 0 && cmd[0] == "kubectl":
				step.Output, err = c.Kubectl(ctx, work, cmd[1:]...)
			default:
				// Environment settings and other tools' commands: the
				// suite's own setup stands for them.
				continue
			}
			steps = append(steps, step)
			if err != nil {
				return steps, fmt.Errorf("docs/setup.md, %q: %s: %w", b.section, strings.Join(cmd, " "), err)
			}
		}
	}
	if len(steps) == 0 {
		return nil, fmt.Errorf("docs/setup.md has no install commands in sections 3 to 6")
	}
	return steps, nil
}

// overlayFromDocs is the overlay of docs/setup.md step 5, with this
// cluster's etcd endpoints and image, plus the --flat-l2 patch of
// docs/usage.md.
func (c *Cluster) overlayFromDocs(setup, usage string) (string, error) {
	var overlay, patch string
	for _, b := range docBlocks(setup) {
		if b.lang == "yaml" && strings.HasPrefix(b.text, "# my-coil/kustomization.yaml") {
			overlay = b.text
		}
	}
	for _, b := range docBlocks(usage) {
		if b.lang == "yaml" && strings.Contains(b.text, "value: --flat-l2") {
			patch = b.text
		}
	}
	if overlay == "" || patch == "" {
		return "", fmt.Errorf("the overlay of docs/setup.md or the --flat-l2 patch of docs/usage.md is missing")
	}
	replacements := []struct {
		re   *regexp.Regexp
		with string
	}{
		{regexp.MustCompile(`(?m)^(\s*- etcd-endpoints=).*$`), "${1}" + c.EtcdEndpoints()},
		{regexp.MustCompile(`(?m)^(\s*newName: ).*$`), "${1}" + CoilImageName},
		{regexp.MustCompile(`(?m)^(\s*newTag: ).*$`), "${1}" + CoilImageTag},
	}
	for _, r := range replacements {
		if !r.re.MatchString(overlay) {
			return "", fmt.Errorf("the overlay of docs/setup.md has no line matching %s", r.re)
		}
		overlay = r.re.ReplaceAllString(overlay, r.with)
	}
	return overlay + patch, nil
}

// copyTree copies the regular files under src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if e.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
)

// trace runs one cnitool command under strace, following its children,
// and returns when each process (cnitool, the plugins) started and ended,
// relative to the start of cnitool. strace traces only execve and
// exit_group, with a seccomp filter, so it barely slows the processes.
func (r *cniRunner) trace(ctx context.Context, tmp, cmd, net string, p *benchPod) (string, error) {
	out := filepath.Join(tmp, "strace-"+net+"-"+cmd)
	err := r.node.Do(func(ns.NetNS) error {
		c := exec.CommandContext(ctx, "strace", "-f", "-ttt", "-q", "--seccomp-bpf", "-e", "trace=execve,exit_group", "-o", out,
			filepath.Join(r.binDir, "cnitool"), cmd, net, p.ns.Path())
		c.Env = append(os.Environ(),
			"CNI_PATH="+r.binDir,
			"NETCONFPATH="+r.confDir,
			"CNI_IFNAME=eth0",
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE="+benchNS+";K8S_POD_NAME="+p.name,
		)
		if b, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("strace cnitool %s %s: %v: %s", cmd, net, err, b)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return "", err
	}
	type proc struct {
		name       string
		start, end float64
	}
	procs := map[string]*proc{}
	t0 := 0.0
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		pid := f[0]
		ts, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		if t0 == 0 {
			t0 = ts
		}
		switch {
		case strings.HasPrefix(f[2], "execve("):
			name := strings.Trim(strings.TrimPrefix(f[2], "execve("), `",`)
			procs[pid] = &proc{name: filepath.Base(name), start: ts, end: -1}
		case f[2] == "+++" && len(f) > 3 && f[3] == "exited":
			// Printed for the process when its last thread is gone.
			if pr, ok := procs[pid]; ok {
				pr.end = ts
			}
		}
	}
	list := make([]*proc, 0, len(procs))
	for _, pr := range procs {
		list = append(list, pr)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].start < list[j].start })
	var parts []string
	for _, pr := range list {
		if pr.end < 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.1f-%.1f ms", pr.name, (pr.start-t0)*1000, (pr.end-t0)*1000))
	}
	return strings.Join(parts, ", "), nil
}

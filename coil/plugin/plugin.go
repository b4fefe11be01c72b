// Package plugin implements the Coil CNI plugin: ADD, DEL, CHECK, GC and
// STATUS of CNI spec 1.1. Addresses come from coild over its REST API
// (package api); the kernel work is package nodenet's. The plugin never
// talks to etcd.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/nodenet"
)

// About is printed when the binary is run without CNI_COMMAND.
const About = "Coil CNI plugin: pod addresses from coild, veth and host routes"

// SupportedVersions are the CNI spec versions the plugin speaks. 0.1.0 and
// 0.2.0 are left out: their results cannot describe dual-stack pods.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// commandTimeout bounds one CNI command. kubelet waits longer; a plugin
// that has not finished by then is stuck and should fail and be retried.
const commandTimeout = 2 * time.Minute

// rollbackTimeout bounds the Release of a failed ADD, which runs on a fresh
// context because the command's may be what expired.
const rollbackTimeout = 30 * time.Second

// Funcs returns the CNI command handlers for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    CmdAdd,
		Del:    CmdDel,
		Check:  CmdCheck,
		GC:     CmdGC,
		Status: CmdStatus,
	}
}

// call is what every command starts from: parsed config and a client.
type call struct {
	conf   *NetConf
	client *api.Client
}

func newCall(args *skel.CmdArgs) (*call, error) {
	conf, err := parseNetConf(args.StdinData)
	if err != nil {
		return nil, err
	}
	client, err := api.NewClient(conf.Coild)
	if err != nil {
		// parseNetConf checked the endpoint already.
		return nil, invalidConf(fmt.Sprintf("invalid \"coild\" endpoint %q", conf.Coild), err.Error())
	}
	return &call{conf: conf, client: client}, nil
}

// CmdAdd allocates the pod's addresses from coild, wires up its veth, and
// has coild set up its egress tunnels.
// If anything fails after the allocation, the allocation and any links are
// undone, so a failed ADD leaves nothing behind for kubelet's retry.
func CmdAdd(args *skel.CmdArgs) error {
	c, pod, ctx, cancel, err := startPodCommand(args)
	if err != nil {
		return err
	}
	defer cancel()

	att := attachment(args)
	cfg := nodenet.PodConfig{
		NetNSPath:    args.Netns,
		IfName:       args.IfName,
		HostVethName: hostVethName(pod, args),
		Secondary:    secondary(args),
		MTU:          c.conf.MTU,
	}
	// The links need no address: they are built while coild allocates
	// (an etcd write), and get their addresses after. The goroutine is
	// always waited for below, whatever the allocation's outcome.
	type created struct {
		pod *nodenet.PendingPod
		err error
	}
	// A goroutine may run on a thread in another network namespace than
	// this one's (a runtime that set the namespace on its thread only):
	// it works in the caller's, by its handle.
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return internalError("open the node's network namespace", err)
	}
	defer hostNS.Close()
	linksDone := make(chan created, 1)
	go func() {
		var made created
		made.err = hostNS.Do(func(ns.NetNS) error {
			lc := cfg
			if lc.MTU == 0 {
				mtu, err := nodenet.UplinkMTU()
				if err != nil {
					return fmt.Errorf("detect uplink MTU: %w", err)
				}
				lc.MTU = mtu
			}
			var err error
			made.pod, err = nodenet.CreatePodLinks(lc)
			return err
		})
		linksDone <- made
	}()

	where := fmt.Sprintf("allocate address for pod %s (container %s, %s) from coild at %s",
		pod, att.ContainerID, att.Interface, c.conf.Coild)
	resp, err := c.client.Allocate(ctx, api.AllocRequest{
		PodNamespace: pod.Namespace,
		PodName:      pod.Name,
		PodUID:       pod.UID,
		ContainerID:  att.ContainerID,
		Interface:    att.Interface,
		NetNS:        args.Netns,
		Network:      c.conf.Name,
		// Lets coild tell whether the pod uses an egress without
		// asking the API server, when its cache lags behind.
		EgressAnnotations: api.EgressAnnotations(c.conf.RuntimeConfig.PodAnnotations),
	})
	made := <-linksDone
	if err != nil {
		if made.pod != nil {
			// Ours, just made: nothing else can hold this pod's links.
			_ = made.pod.Abandon()
		}
		return coildError(where, err)
	}
	if made.err != nil {
		return c.rollback(args, pod, cfg, false,
			internalError(fmt.Sprintf("set up network of pod %s in %s", pod, args.Netns), made.err))
	}
	cfg.IPv4, cfg.IPv6, err = splitAddresses(resp)
	if err != nil {
		_ = made.pod.Abandon()
		return c.rollback(args, pod, cfg, false, types.NewError(types.ErrInternal,
			fmt.Sprintf("coil: coild at %s returned unusable addresses for pod %s: %v", c.conf.Coild, pod, err), ""))
	}
	// Finish removes what CreatePodLinks made when it fails, and must be
	// the only one to: the pod's interface name may be held by a link
	// that is not ours, which a teardown here would delete.
	links, err := made.pod.Finish(cfg.IPv4, cfg.IPv6)
	if err != nil {
		return c.rollback(args, pod, cfg, false,
			internalError(fmt.Sprintf("set up network of pod %s in %s", pod, args.Netns), err))
	}
	// Egress tunnels go in before ADD returns, so that the pod's first
	// packet to an egress destination already takes the gateway. coild
	// says in its allocation when there is nothing to set up (no egress
	// exists, or the pod it knows uses none), sparing a round trip.
	if !resp.SkipEgress {
		if _, err := c.client.SetupEgress(ctx, api.EgressRequest{
			PodNamespace: pod.Namespace,
			PodName:      pod.Name,
			ContainerID:  att.ContainerID,
			Interface:    att.Interface,
			NetNS:        args.Netns,
		}); err != nil {
			return c.rollback(args, pod, cfg, true,
				coildError(fmt.Sprintf("set up egress of pod %s at coild %s", pod, c.conf.Coild), err))
		}
	}
	if err := types.PrintResult(buildResult(links, cfg.IPv4, cfg.IPv6, cfg.Secondary), c.conf.CNIVersion); err != nil {
		return c.rollback(args, pod, cfg, true, internalError("print result", err))
	}
	return nil
}

// rollback undoes a failed ADD: it tears the pod's links down if
// teardown is set, releases the allocation, and returns cause, with any
// failure of the rollback itself added to its details.
func (c *call) rollback(args *skel.CmdArgs, pod podRef, cfg nodenet.PodConfig, teardown bool, cause *types.Error) error {
	var problems []error
	if teardown {
		if err := nodenet.TeardownPod(args.Netns, args.IfName, cfg.HostVethName); err != nil {
			problems = append(problems, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	if err := c.client.Release(ctx, pod.Namespace, pod.Name, attachment(args)); err != nil && !errors.Is(err, api.ErrNotFound) {
		problems = append(problems, fmt.Errorf("release address: %w", err))
	}
	if len(problems) == 0 {
		return cause
	}
	rb := fmt.Sprintf("rollback failed: %v", errors.Join(problems...))
	if cause.Details != "" {
		rb = cause.Details + "; " + rb
	}
	return types.NewError(cause.Code, cause.Msg, rb)
}

// splitAddresses returns the IPv4 and IPv6 address of an allocation; at
// most one of each and at least one address are expected.
func splitAddresses(resp api.AllocResponse) (v4, v6 netip.Addr, err error) {
	list := resp.Addresses
	if len(list) == 0 && resp.Address != "" {
		list = []string{resp.Address}
	}
	if len(list) == 0 {
		return v4, v6, errors.New("no address in the answer")
	}
	for _, s := range list {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return v4, v6, fmt.Errorf("address %q: %w", s, err)
		}
		a = a.Unmap()
		slot := &v6
		if a.Is4() {
			slot = &v4
		}
		if slot.IsValid() {
			return v4, v6, fmt.Errorf("more than one address of a family in %v", list)
		}
		*slot = a
	}
	return v4, v6, nil
}

// buildResult describes the pod's network as a CNI 1.x result; PrintResult
// converts it to the requested version. A secondary interface has no
// gateway and no routes (see nodenet.PodConfig.Secondary).
func buildResult(links nodenet.PodLinks, v4, v6 netip.Addr, secondary bool) *current.Result {
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: links.Host.Name, Mac: links.Host.MAC.String()},
			{Name: links.Container.Name, Mac: links.Container.MAC.String(), Sandbox: links.Container.Sandbox},
		},
	}
	podIf := current.Int(1)
	for _, p := range []struct{ addr, gw netip.Addr }{{v4, nodenet.GatewayIPv4}, {v6, nodenet.GatewayIPv6}} {
		if !p.addr.IsValid() {
			continue
		}
		bits := p.addr.BitLen()
		ipc := &current.IPConfig{
			Interface: podIf,
			Address:   net.IPNet{IP: p.addr.AsSlice(), Mask: net.CIDRMask(bits, bits)},
		}
		r.IPs = append(r.IPs, ipc)
		if secondary {
			continue
		}
		gw := net.IP(p.gw.AsSlice())
		ipc.Gateway = gw
		r.Routes = append(r.Routes, &types.Route{
			Dst: net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)},
			GW:  gw,
		})
	}
	return r
}

// hostVethName is the host veth of the pod interface a CNI call is for.
func hostVethName(pod podRef, args *skel.CmdArgs) string {
	return nodenet.PodHostVethName(pod.Namespace, pod.Name, args.IfName)
}

// secondary reports whether a CNI call is for an interface other than the
// pod's primary one, which gets no routes.
func secondary(args *skel.CmdArgs) bool {
	return args.IfName != nodenet.PrimaryInterface
}

// attachment names the container interface a CNI call is for, as coild
// keys its allocations.
func attachment(args *skel.CmdArgs) api.Attachment {
	return api.Attachment{ContainerID: args.ContainerID, Interface: args.IfName}
}

// startPodCommand reads what ADD, DEL and CHECK all need (the
// configuration and the pod's name) and bounds the command in time.
func startPodCommand(args *skel.CmdArgs) (*call, podRef, context.Context, context.CancelFunc, error) {
	c, err := newCall(args)
	if err != nil {
		return nil, podRef{}, nil, nil, err
	}
	pod, err := parsePodArgs(args.Args)
	if err != nil {
		return nil, podRef{}, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	return c, pod, ctx, cancel, nil
}

// CmdDel releases the pod's addresses and has its veth removed. It
// succeeds when there is nothing left to remove, as the spec asks of DEL.
// coild removes the pod's host routes (which stops traffic to it),
// releases the addresses and answers; it deletes the veth afterwards,
// because the kernel takes tens of milliseconds to delete one, and hands
// the addresses out again only once the veth is gone. A pod that coild
// holds no address for has nothing of Coil's left but, possibly, its
// links (an ADD that failed half-way): coild says so in its answer, and
// the plugin removes them itself.
func CmdDel(args *skel.CmdArgs) error {
	c, pod, ctx, cancel, err := startPodCommand(args)
	if err != nil {
		return err
	}
	defer cancel()

	att := attachment(args)
	resp, err := c.client.ReleaseLinks(ctx, pod.Namespace, pod.Name, att)
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return coildError(fmt.Sprintf("release address of pod %s (container %s, %s) at coild %s",
			pod, att.ContainerID, att.Interface, c.conf.Coild), err)
	}
	if !resp.RemovesLinks {
		// No address was held (nothing to protect), or an older coild:
		// the links are the plugin's to remove.
		if err := nodenet.TeardownPod(args.Netns, args.IfName, hostVethName(pod, args)); err != nil {
			return internalError(fmt.Sprintf("tear down network of pod %s", pod), err)
		}
	}
	return nil
}

// CmdCheck verifies that coild still holds the pod's addresses and that
// its links, addresses and routes are as ADD made them, and matches both
// against prevResult when the runtime passes one.
func CmdCheck(args *skel.CmdArgs) error {
	c, pod, ctx, cancel, err := startPodCommand(args)
	if err != nil {
		return err
	}
	defer cancel()

	att := attachment(args)
	resp, err := c.client.Get(ctx, pod.Namespace, pod.Name, att)
	if errors.Is(err, api.ErrNotFound) {
		return types.NewError(types.ErrUnknownContainer,
			fmt.Sprintf("coil: coild at %s holds no address for pod %s (container %s, %s)",
				c.conf.Coild, pod, att.ContainerID, att.Interface), "")
	}
	if err != nil {
		return coildError(fmt.Sprintf("get address of pod %s from coild at %s", pod, c.conf.Coild), err)
	}
	v4, v6, err := splitAddresses(resp)
	if err != nil {
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("coil: coild at %s returned unusable addresses for pod %s: %v", c.conf.Coild, pod, err), "")
	}

	if c.conf.PrevResult != nil {
		if err := checkPrevResult(c.conf.PrevResult, args, v4, v6); err != nil {
			return types.NewError(types.ErrInternal, fmt.Sprintf("coil: pod %s: %v", pod, err), "")
		}
	}

	cfg := nodenet.PodConfig{
		NetNSPath:    args.Netns,
		IfName:       args.IfName,
		HostVethName: hostVethName(pod, args),
		Secondary:    secondary(args),
		IPv4:         v4,
		IPv6:         v6,
		// An automatic MTU is not checked: the uplink may have changed
		// since ADD, which does not make the pod broken.
		MTU: c.conf.MTU,
	}
	if err := nodenet.CheckPod(cfg); err != nil {
		return internalError(fmt.Sprintf("check network of pod %s", pod), err)
	}
	return nil
}

// checkPrevResult verifies that the result the runtime cached for ADD names
// the pod interface and the addresses coild holds.
func checkPrevResult(prev types.Result, args *skel.CmdArgs, v4, v6 netip.Addr) error {
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return fmt.Errorf("convert prevResult: %w", err)
	}
	podIf := slices.IndexFunc(res.Interfaces, func(i *current.Interface) bool {
		return i.Name == args.IfName && i.Sandbox == args.Netns
	})
	if podIf < 0 {
		return fmt.Errorf("prevResult has no interface %s in %s", args.IfName, args.Netns)
	}
	for _, a := range []netip.Addr{v4, v6} {
		if !a.IsValid() {
			continue
		}
		found := slices.ContainsFunc(res.IPs, func(ip *current.IPConfig) bool {
			got, ok := netip.AddrFromSlice(ip.Address.IP)
			return ok && got.Unmap() == a && ip.Interface != nil && *ip.Interface == podIf
		})
		if !found {
			return fmt.Errorf("prevResult lacks address %s on %s, which coild holds", a, args.IfName)
		}
	}
	return nil
}

// CmdGC asks coild to release every address of this network on this node
// that belongs to none of the runtime's valid attachments.
func CmdGC(args *skel.CmdArgs) error {
	c, err := newCall(args)
	if err != nil {
		return err
	}
	if c.conf.Name == "" {
		return invalidConf("GC needs the network config's \"name\"", "without it coild cannot tell this network's addresses from another's")
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()

	// The runtime lists the attachments of this network only, so coild
	// must collect this network's addresses only.
	req := api.GCRequest{Network: c.conf.Name, ValidAttachments: make([]api.Attachment, 0, len(c.conf.ValidAttachments))}
	for _, a := range c.conf.ValidAttachments {
		req.ValidAttachments = append(req.ValidAttachments, api.Attachment{ContainerID: a.ContainerID, Interface: a.IfName})
	}
	if _, err := c.client.GC(ctx, req); err != nil {
		return coildError(fmt.Sprintf("garbage-collect addresses at coild %s", c.conf.Coild), err)
	}
	return nil
}

// CmdStatus reports whether the plugin can serve ADD: coild must answer
// /readyz with 200.
func CmdStatus(args *skel.CmdArgs) error {
	c, err := newCall(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if err := c.client.Ready(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("plugin not available: coild at %s is not ready", c.conf.Coild), err.Error())
	}
	return nil
}

package nodenet

// Health probes of egress gateways. A client's node sends ICMP echo requests
// to the gateway pods its clients use, over the pod network the tunnels
// take. The gateway pod's kernel answers them, so a gateway keeps answering
// while its node's coild restarts; but only a gateway whose coild programmed
// it stamps the answer: a rule of its nftables table writes the egress's VNI
// into the request's data before the kernel copies that data into the reply
// (programGatewayNFT). A reply without the stamp comes from a pod that
// coild has not made a gateway (yet).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// EgressProbeMagic opens the data of every probe echo request. The
// gateway's stamp rule matches it, so ordinary pings are left alone.
const EgressProbeMagic uint32 = 0xc011e7a0

// egressProbeLen is the data of a probe: the magic, then the stamp the
// gateway writes (its VNI; zero as sent).
const egressProbeLen = 8

// ProbeReply is an answer to a probe.
type ProbeReply struct {
	// From is the address that answered.
	From netip.Addr
	// ID and Seq echo the request's.
	ID, Seq uint16
	// VNI is the stamp the gateway wrote: the VNI of the egress it
	// serves, zero if it did not stamp (it is not programmed as a
	// gateway).
	VNI uint32
}

// ProbeSocket sends probes and reads their replies, over raw ICMP sockets
// of the network namespace it was opened in.
type ProbeSocket struct {
	c4, c6 *icmp.PacketConn
}

// OpenProbeSocket opens the raw ICMP sockets (IPv4 and IPv6) of the current
// network namespace; they stay in it whatever thread uses them later.
func OpenProbeSocket() (*ProbeSocket, error) {
	c4, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("open ICMP socket for egress probes: %w", err)
	}
	c6, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		c4.Close()
		return nil, fmt.Errorf("open ICMPv6 socket for egress probes: %w", err)
	}
	// Only echo replies concern the prober: let the kernel drop the rest
	// (a raw socket otherwise gets every ICMP message of the node).
	var f4 ipv4.ICMPFilter
	f4.SetAll(true)
	f4.Accept(ipv4.ICMPTypeEchoReply)
	if err := c4.IPv4PacketConn().SetICMPFilter(&f4); err != nil {
		c4.Close()
		c6.Close()
		return nil, fmt.Errorf("filter ICMP socket: %w", err)
	}
	var f6 ipv6.ICMPFilter
	f6.SetAll(true)
	f6.Accept(ipv6.ICMPTypeEchoReply)
	if err := c6.IPv6PacketConn().SetICMPFilter(&f6); err != nil {
		c4.Close()
		c6.Close()
		return nil, fmt.Errorf("filter ICMPv6 socket: %w", err)
	}
	return &ProbeSocket{c4: c4, c6: c6}, nil
}

// Close closes the sockets; pending reads return.
func (s *ProbeSocket) Close() error {
	return errors.Join(s.c4.Close(), s.c6.Close())
}

// Send sends one probe to dst.
func (s *ProbeSocket) Send(dst netip.Addr, id, seq uint16) error {
	dst = dst.Unmap()
	data := binary.BigEndian.AppendUint32(make([]byte, 0, egressProbeLen), EgressProbeMagic)
	data = append(data, 0, 0, 0, 0)
	m := icmp.Message{Body: &icmp.Echo{ID: int(id), Seq: int(seq), Data: data}}
	c := s.c4
	if dst.Is4() {
		m.Type = ipv4.ICMPTypeEcho
	} else {
		// The kernel fills in the checksum of raw ICMPv6.
		m.Type = ipv6.ICMPTypeEchoRequest
		c = s.c6
	}
	b, err := m.Marshal(nil)
	if err != nil {
		return fmt.Errorf("build probe: %w", err)
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("send probe to %s: %w", dst, err)
	}
	return nil
}

// Read4 and Read6 block until a probe reply of their family comes, and
// return it; they fail once the socket is closed. Other ICMP messages are
// skipped. Each is meant for one reading goroutine.
func (s *ProbeSocket) Read4() (ProbeReply, error) { return readProbe(s.c4, 1) }

// Read6 is Read4 for IPv6.
func (s *ProbeSocket) Read6() (ProbeReply, error) { return readProbe(s.c6, 58) }

func readProbe(c *icmp.PacketConn, proto int) (ProbeReply, error) {
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return ProbeReply{}, err
		}
		r, ok := parseProbeReply(proto, buf[:n])
		if !ok {
			continue
		}
		if ip, ok := from.(*net.IPAddr); ok {
			r.From, _ = netip.AddrFromSlice(ip.IP)
			r.From = r.From.Unmap()
		}
		return r, nil
	}
}

// parseProbeReply reads an ICMP message (without IP header) as the reply to
// a probe; ok is false for anything else.
func parseProbeReply(proto int, b []byte) (ProbeReply, bool) {
	m, err := icmp.ParseMessage(proto, b)
	if err != nil || m.Type != ipv4.ICMPTypeEchoReply && m.Type != ipv6.ICMPTypeEchoReply {
		return ProbeReply{}, false
	}
	e, ok := m.Body.(*icmp.Echo)
	if !ok || len(e.Data) < egressProbeLen || binary.BigEndian.Uint32(e.Data) != EgressProbeMagic {
		return ProbeReply{}, false
	}
	return ProbeReply{ID: uint16(e.ID), Seq: uint16(e.Seq), VNI: binary.BigEndian.Uint32(e.Data[4:])}, true
}

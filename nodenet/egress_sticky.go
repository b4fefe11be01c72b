package nodenet

// Established connections of a client keep their gateway. A client's
// tunnel device has one FDB entry, to the gateway its new connections take;
// all gateways of an egress share one MAC, so a second FDB entry cannot
// tell them apart. Instead the client's nftables table remembers, in the
// conntrack mark, the gateway each connection started through, and sends
// the packets of a connection whose gateway is another live one of the
// egress to that gateway: the inner packet gets the gateway's tag as packet
// mark, the VXLAN packet the kernel wraps it in inherits the mark, and its
// outer destination is rewritten from the current gateway to the tagged one.
// The tagged gateway serves every client of its egress, so it takes the
// packets and returns the replies through its own tunnel to the client.

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// EgressClientNFTable is the nftables table (family inet) of a client pod.
const EgressClientNFTable = "coil-egress-client"

// EgressGatewayTag is the conntrack mark a client gives the connections it
// opens through the gateway at outer address gw, and the packet mark that
// steers their packets back to it: the IPv4 address itself, or 32 bits of
// a hash of the IPv6 one, with the top bit set so that it is never zero.
func EgressGatewayTag(gw netip.Addr) uint32 {
	gw = gw.Unmap()
	if gw.Is4() {
		b := gw.As4()
		return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	}
	h := fnv.New32a()
	b := gw.As16()
	h.Write(b[:])
	return h.Sum32() | 1<<31
}

// programClientNFT makes the client's nftables table exactly this, in one
// transaction, or removes it when no tunnel has a gateway:
//
//	table inet coil-egress-client {
//	  chain output { type route hook output priority mangle;
//	    # per tunnel device X with current gateway G:
//	    oifname "egc-X" ct state new ct mark set <tag G>
//	    # per other live gateway D of its egress:
//	    oifname "egc-X" ct mark <tag D> meta mark set <tag D>
//	    udp dport 4789 meta mark <tag D> ip daddr G ip daddr set D
//	  }
//	}
//
// The chain is of type route, so the kernel routes a packet again when the
// chain changed its mark or destination.
func programClientNFT(nsFd int, tunnels []EgressTunnel) error {
	conn, err := nftables.New(nftables.WithNetNSFd(nsFd))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: EgressClientNFTable}
	tables, err := conn.ListTablesOfFamily(t.Family)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	exists := slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name })
	if !slices.ContainsFunc(tunnels, func(x EgressTunnel) bool { return x.Gateway.IsValid() }) {
		if exists {
			conn.DelTable(t)
			if err := conn.Flush(); err != nil {
				return fmt.Errorf("delete nftables table %s: %w", t.Name, err)
			}
		}
		return nil
	}
	// Deleting the table (if there) and adding it afresh in one
	// transaction leaves exactly this, never half of it.
	if exists {
		conn.DelTable(t)
	}
	conn.AddTable(t)
	out := conn.AddChain(&nftables.Chain{
		Name: "output", Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle,
	})
	for _, tn := range tunnels {
		if !tn.Gateway.IsValid() {
			continue
		}
		dev := nftIfName(EgressClientLinkName(tn.VNI))
		conn.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dev},
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(EgressGatewayTag(tn.Gateway))},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		}})
		gw := tn.Gateway.Unmap()
		for _, d := range tn.Established {
			d = d.Unmap()
			if d == gw || d.Is4() != gw.Is4() || !d.IsValid() {
				continue
			}
			tag := binaryutil.NativeEndian.PutUint32(EgressGatewayTag(d))
			conn.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dev},
				&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: tag},
				&expr.Immediate{Register: 1, Data: tag},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
			}})
			nfproto, off, csumType, csumOff := byte(unix.NFPROTO_IPV4), uint32(16), expr.CsumTypeInet, uint32(10)
			if d.Is6() {
				nfproto, off, csumType, csumOff = unix.NFPROTO_IPV6, 24, expr.CsumTypeNone, 0
			}
			conn.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(EgressVXLANPort)},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: tag},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(gw.AsSlice()))},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: gw.AsSlice()},
				&expr.Immediate{Register: 1, Data: d.AsSlice()},
				// The outer UDP checksum covers the address (IPv6;
				// IPv4 VXLAN sends none).
				&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseNetworkHeader,
					Offset: off, Len: uint32(len(d.AsSlice())), CsumType: csumType, CsumOffset: csumOff,
					CsumFlags: unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR},
			}})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("program nftables table %s: %w", EgressClientNFTable, err)
	}
	return nil
}

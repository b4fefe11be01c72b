package model_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/coil-project/coil/model"
)

func TestParseSubnet(t *testing.T) {
	cases := []struct {
		name, first, v6 string
		want            error
		family          string
	}{
		{"ipv4", "10.0.0.0/24", "", nil, "ipv4"},
		{"ipv6", "fd00::/112", "", nil, "ipv6"},
		{"dual", "10.0.0.0/24", "fd00::/120", nil, "dual"},
		{"non-canonical", "10.0.0.1/24", "", model.ErrInvalidCIDR, ""},
		{"non-canonical v6", "10.0.0.0/24", "fd00::1/120", model.ErrInvalidCIDR, ""},
		{"garbage", "ten/8", "", model.ErrInvalidCIDR, ""},
		{"no length", "10.0.0.0", "", model.ErrInvalidCIDR, ""},
		{"pair of different size", "10.0.0.0/24", "fd00::/112", model.ErrInvalidCIDR, ""},
		{"v6 paired with v6", "fd00::/120", "fd01::/120", model.ErrInvalidCIDR, ""},
		{"v4 as pair's v6", "10.0.0.0/24", "10.1.0.0/24", model.ErrInvalidCIDR, ""},
		{"v4-mapped", "::ffff:10.0.0.0/120", "", model.ErrInvalidCIDR, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := model.ParseSubnet(c.first, c.v6)
			if !errors.Is(err, c.want) {
				t.Fatalf("ParseSubnet(%q, %q) error = %v, want %v", c.first, c.v6, err, c.want)
			}
			if err == nil && s.Family() != c.family {
				t.Errorf("family = %s, want %s", s.Family(), c.family)
			}
		})
	}
}

func mustSubnet(t *testing.T, first, v6 string) model.Subnet {
	t.Helper()
	s, err := model.ParseSubnet(first, v6)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPoolValidate(t *testing.T) {
	v4 := mustSubnet(t, "10.0.0.0/24", "")
	dual := mustSubnet(t, "10.1.0.0/24", "fd00::/120")
	cases := []struct {
		name string
		pool model.Pool
		want error
	}{
		{"ok", model.Pool{Name: "default", BlockSizeBits: 5, Subnets: []model.Subnet{v4}}, nil},
		{"whole subnet one block", model.Pool{Name: "a", BlockSizeBits: 8, Subnets: []model.Subnet{v4}}, nil},
		{"upper case", model.Pool{Name: "Default", BlockSizeBits: 5, Subnets: []model.Subnet{v4}}, model.ErrInvalidName},
		{"leading dash", model.Pool{Name: "-a", BlockSizeBits: 5, Subnets: []model.Subnet{v4}}, model.ErrInvalidName},
		{"empty name", model.Pool{Name: "", BlockSizeBits: 5, Subnets: []model.Subnet{v4}}, model.ErrInvalidName},
		{"too long", model.Pool{Name: "a123456789012345678901234567890123456789012345678901234567890123", BlockSizeBits: 5, Subnets: []model.Subnet{v4}}, model.ErrInvalidName},
		{"block larger than subnet", model.Pool{Name: "a", BlockSizeBits: 9, Subnets: []model.Subnet{v4}}, model.ErrInvalidBlockSize},
		{"negative block", model.Pool{Name: "a", BlockSizeBits: -1, Subnets: []model.Subnet{v4}}, model.ErrInvalidBlockSize},
		{"too many blocks", model.Pool{Name: "a", BlockSizeBits: 0, Subnets: []model.Subnet{mustSubnet(t, "10.0.0.0/8", "")}}, model.ErrInvalidBlockSize},
		{"2^20 blocks is fine", model.Pool{Name: "a", BlockSizeBits: 4, Subnets: []model.Subnet{mustSubnet(t, "10.0.0.0/8", "")}}, nil},
		{"no subnet", model.Pool{Name: "a", BlockSizeBits: 4}, model.ErrInvalidCIDR},
		{"mixed families", model.Pool{Name: "a", BlockSizeBits: 4, Subnets: []model.Subnet{v4, dual}}, model.ErrInvalidCIDR},
		{"overlap inside pool", model.Pool{Name: "a", BlockSizeBits: 4, Subnets: []model.Subnet{v4, mustSubnet(t, "10.0.0.128/25", "")}}, model.ErrSubnetOverlap},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.pool.Validate(); !errors.Is(err, c.want) {
				t.Fatalf("Validate() = %v, want %v", err, c.want)
			}
		})
	}
}

func TestPoolArithmetic(t *testing.T) {
	p := model.Pool{Name: "d", BlockSizeBits: 4, Subnets: []model.Subnet{
		mustSubnet(t, "10.0.0.0/24", "fd00::/120"),
		mustSubnet(t, "10.9.0.0/28", "fd09::/124"),
	}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := p.NumBlocks(); got != 17 {
		t.Fatalf("NumBlocks = %d, want 17", got)
	}
	v4, v6 := p.BlockPrefixes(0, 3)
	if v4 != netip.MustParsePrefix("10.0.0.48/28") || v6 != netip.MustParsePrefix("fd00::30/124") {
		t.Fatalf("BlockPrefixes(0,3) = %s %s", v4, v6)
	}
	for _, c := range []struct {
		ip            string
		sub, blk, off int
		ok            bool
	}{
		{"10.0.0.53", 0, 3, 5, true},
		{"fd00::35", 0, 3, 5, true},
		{"10.9.0.15", 1, 0, 15, true},
		{"10.9.0.16", 0, 0, 0, false},
		{"192.168.0.1", 0, 0, 0, false},
	} {
		sub, blk, off, ok := p.Locate(netip.MustParseAddr(c.ip))
		if ok != c.ok || (ok && (sub != c.sub || blk != c.blk || off != c.off)) {
			t.Errorf("Locate(%s) = %d %d %d %v, want %d %d %d %v", c.ip, sub, blk, off, ok, c.sub, c.blk, c.off, c.ok)
		}
	}
}

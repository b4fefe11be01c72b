package plugin

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParseNetConf feeds arbitrary network configurations to the parser:
// it must not panic, and must refuse with a CNI error of code 7.
func FuzzParseNetConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"k8s","type":"coil","coild":"unix:///run/coild.sock","mtu":1450}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"k8s","type":"coil","prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.1.0.5/32"}]}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"k8s","type":"coil","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := parseNetConf(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error %v is not a CNI error of code 7", err)
			}
			return
		}
		if conf.Coild == "" || conf.MTU < 0 || conf.MTU > maxMTU {
			t.Fatalf("accepted %+v", conf)
		}
	})
}

// FuzzParsePodArgs feeds arbitrary CNI_ARGS to the parser: no panic, and
// an accepted pod has a namespace and a name.
func FuzzParsePodArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u")
	f.Fuzz(func(t *testing.T, args string) {
		p, err := parsePodArgs(args)
		if err == nil && (p.Namespace == "" || p.Name == "") {
			t.Fatalf("accepted %+v", p)
		}
	})
}

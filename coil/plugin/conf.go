package plugin

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/coil-project/coil/coild/api"
)

// maxMTU is the largest MTU Linux accepts on a veth.
const maxMTU = 65535

// NetConf is the plugin's network configuration, the standard CNI fields
// plus Coil's own.
type NetConf struct {
	types.PluginConf

	// Coild is coild's endpoint: an http:// URL or a unix socket as
	// unix:///path or /path. Default api.DefaultEndpoint.
	Coild string `json:"coild,omitempty"`
	// MTU of the pod interface; 0 follows the node's uplink.
	MTU int `json:"mtu,omitempty"`
	// RuntimeConfig holds what the runtime passes for the capabilities
	// the configuration declares.
	RuntimeConfig struct {
		// PodAnnotations are the pod's annotations, which containerd
		// passes when the configuration declares the capability
		// api.PodAnnotationsCapability; nil when the runtime did not.
		PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations"`
	} `json:"runtimeConfig"`
}

// parseNetConf decodes and checks the network configuration from stdin.
// Every failure is a CNI error with code 7, invalid network config.
func parseNetConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, invalidConf("cannot decode network config", err.Error())
	}
	if conf.Coild == "" {
		conf.Coild = api.DefaultEndpoint
	}
	if _, err := api.NewClient(conf.Coild); err != nil {
		return nil, invalidConf(fmt.Sprintf("invalid \"coild\" endpoint %q", conf.Coild), err.Error())
	}
	if conf.Name != "" {
		// coild records the name with each address and GC collects by it.
		if err := api.ValidateNetwork(conf.Name); err != nil {
			return nil, invalidConf("invalid \"name\"", err.Error())
		}
	}
	if conf.MTU < 0 || conf.MTU > maxMTU {
		return nil, invalidConf(fmt.Sprintf("invalid \"mtu\" %d: want 0 (auto) or up to %d", conf.MTU, maxMTU), "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, invalidConf("cannot parse prevResult", err.Error())
	}
	return conf, nil
}

func invalidConf(msg, details string) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "coil: "+msg, details)
}

// podRef names the Kubernetes pod a CNI call is for.
type podRef struct {
	Namespace, Name string
	// UID is optional: kubelet passes it, other runtimes may not.
	UID string
}

// String returns "<namespace>/<name>", as kubectl shows pods.
func (p podRef) String() string { return p.Namespace + "/" + p.Name }

// parsePodArgs reads K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS
// ("K1=V1;K2=V2"). Other keys are ignored whatever IgnoreUnknown says:
// runtimes add keys over time, and failing on them helps nobody.
func parsePodArgs(args string) (podRef, error) {
	var p podRef
	for pair := range strings.SplitSeq(args, ";") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "K8S_POD_NAMESPACE":
			p.Namespace = strings.TrimSpace(v)
		case "K8S_POD_NAME":
			p.Name = strings.TrimSpace(v)
		case "K8S_POD_UID":
			p.UID = strings.TrimSpace(v)
		}
	}
	if p.Namespace == "" || p.Name == "" {
		return podRef{}, types.NewError(types.ErrInvalidEnvironmentVariables,
			"coil: CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME",
			fmt.Sprintf("CNI_ARGS=%q", args))
	}
	return p, nil
}

package plugin

import "github.com/containernetworking/cni/pkg/skel"

// Main runs the plugin as the CNI runtime invoked it (CNI_* environment,
// netconf on stdin) and exits.
func Main() {
	skel.PluginMainFuncs(Funcs(), SupportedVersions, About)
}

package cni

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// supportedVersions are the CNI specification versions the plugin answers
// in, oldest first: those the library's current result type converts its
// results to and that carry interfaces (configuration lists exist from
// 0.3.0). The runtime decides through the cniVersion of the configuration
// it passes: the plugin answers ADD in exactly that version, since a
// runtime refuses a result newer than its CNI library knows, and it does
// so only after the plugin attached the pod (containerd 1.6 takes 1.0.0 at
// most).
var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Oldest configuration versions of the commands that came after ADD and
// DEL.
const (
	// MinCheckVersion is the first version with CHECK.
	MinCheckVersion = "0.4.0"
	// MinStatusVersion is the first version with STATUS and GC.
	MinStatusVersion = "1.1.0"
)

// ErrUnsupportedVersion is wrapped by CheckVersion's errors.
var ErrUnsupportedVersion = errors.New("unsupported CNI version")

// SupportedVersions returns the CNI specification versions the plugin
// supports, oldest first.
func SupportedVersions() []string {
	return slices.Clone(supportedVersions)
}

// VersionInfo is what the plugin answers to VERSION, and what skel checks
// a configuration's cniVersion against before it calls the plugin.
func VersionInfo() version.PluginInfo {
	return version.PluginSupports(supportedVersions...)
}

// CheckVersion returns nil when v is a supported version, else an error
// wrapping ErrUnsupportedVersion that lists the supported ones.
func CheckVersion(v string) error {
	if slices.Contains(supportedVersions, v) {
		return nil
	}
	if v == "" {
		v = "none (which means 0.1.0)"
	}
	return fmt.Errorf("%w %s: the twill plugin supports %s", ErrUnsupportedVersion, v, strings.Join(supportedVersions, ", "))
}

// versionAllows returns the specification's "incompatible CNI version"
// error (code 1) when a configuration of version v may not run cmd: the
// version is not supported, or it predates the command. skel answers such
// requests itself before it calls the plugin's functions; this keeps
// Funcs right on its own.
func versionAllows(v, cmd string) error {
	if err := CheckVersion(v); err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "incompatible CNI versions", err.Error())
	}
	var minimum string
	switch cmd {
	case "CHECK":
		minimum = MinCheckVersion
	case "STATUS", "GC":
		minimum = MinStatusVersion
	default:
		return nil
	}
	if ok, err := version.GreaterThanOrEqualTo(v, minimum); err != nil || !ok {
		return types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("config version does not allow %s", cmd),
			fmt.Sprintf("%s exists from CNI %s; the configuration's cniVersion is %s", cmd, minimum, v))
	}
	return nil
}

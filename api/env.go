package api

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultPoolName is the name of the pool PoolFromEnv builds, as in Calico.
const DefaultPoolName = "default-ipv4-ippool"

// DefaultPoolCIDR is the cidr of the default pool when none is configured,
// as in Calico.
const DefaultPoolCIDR = "192.168.0.0/16"

// EnvError reports an environment variable whose value cannot be used.
type EnvError struct {
	// Variable is the name of the variable that was read.
	Variable string
	// Value is its value.
	Value string
	// Rule says what the value must be.
	Rule string
	// Err is the underlying error (a FieldError when validation refused the
	// value), or nil.
	Err error
}

// Error implements error.
func (e *EnvError) Error() string {
	return fmt.Sprintf("%s=%q: %s", e.Variable, e.Value, e.Rule)
}

// Unwrap returns the underlying error.
func (e *EnvError) Unwrap() error { return e.Err }

// poolEnv reads one pool setting: TWILL_IPV4POOL_<suffix> when set, else
// CALICO_IPV4POOL_<suffix>. It returns the variable name used and its value.
func poolEnv(getenv func(string) string, suffix string) (name, value string) {
	name = "TWILL_IPV4POOL_" + suffix
	if v := getenv(name); v != "" {
		return name, v
	}
	name = "CALICO_IPV4POOL_" + suffix
	return name, getenv(name)
}

// parseEnvMode parses an encapsulation mode the way Calico reads its
// environment: never, always or crosssubnet in any case (cross-subnet and
// off are accepted too).
func parseEnvMode(v string) (EncapMode, bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "never", "off":
		return EncapNever, true
	case "always":
		return EncapAlways, true
	case "crosssubnet", "cross-subnet":
		return EncapCrossSubnet, true
	}
	return "", false
}

// PoolFromEnv builds the default pool, default-ipv4-ippool, from the
// environment, the way calico-node does when no pool exists yet:
//
//   - CALICO_IPV4POOL_CIDR: the cidr (default 192.168.0.0/16);
//   - CALICO_IPV4POOL_BLOCK_SIZE: the block size (default 26);
//   - CALICO_IPV4POOL_VXLAN and CALICO_IPV4POOL_IPIP: never, crosssubnet or
//     always, in any case;
//   - CALICO_IPV4POOL_NAT_OUTGOING: true or false (default true);
//   - CALICO_IPV4POOL_NODE_SELECTOR: the nodeSelector (default all()).
//
// Each variable may also be spelled TWILL_IPV4POOL_*; that spelling wins when
// both are set. An empty variable counts as unset.
//
// Encapsulation defaults differ from Calico's on purpose: Calico turns IPIP
// on (Always) when neither CALICO_IPV4POOL_VXLAN nor CALICO_IPV4POOL_IPIP is
// set, but IPIP is not built in Twill, so Twill turns VXLAN on (Always) and
// leaves IPIP at Never instead. When only one of the two is set, the other is
// Never, as in Calico. An IPIP setting other than never is refused, with an
// error that says to use the VXLAN variable.
//
// The result is defaulted and validated. Errors are *EnvError values (joined
// when several variables are bad), each naming its variable and the values it
// accepts.
func PoolFromEnv(getenv func(string) string) (IPPool, error) {
	p := IPPool{Metadata: ObjectMeta{Name: DefaultPoolName}}
	p.Spec.NATOutgoing = true
	var errs []error
	// source maps a spec field to the variable it came from, to name the
	// variable when validation refuses the value.
	source := map[string][2]string{}

	name, v := poolEnv(getenv, "CIDR")
	p.Spec.CIDR = DefaultPoolCIDR
	if v != "" {
		p.Spec.CIDR = strings.TrimSpace(v)
		source["spec.cidr"] = [2]string{name, v}
	}

	name, v = poolEnv(getenv, "BLOCK_SIZE")
	if v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			errs = append(errs, &EnvError{Variable: name, Value: v, Err: err, Rule: fmt.Sprintf(
				"must be a whole number between %d and %d", MinBlockSizeIPv4, MaxBlockSizeIPv4)})
		} else {
			p.Spec.BlockSize = n
			source["spec.blockSize"] = [2]string{name, v}
		}
	}

	const modeRule = "must be one of never, crosssubnet, always (any case)"
	vxName, vx := poolEnv(getenv, "VXLAN")
	ipName, ip := poolEnv(getenv, "IPIP")
	if vx == "" && ip == "" {
		p.Spec.VXLANMode, p.Spec.IPIPMode = EncapAlways, EncapNever
	}
	if vx != "" {
		if m, ok := parseEnvMode(vx); ok {
			p.Spec.VXLANMode = m
			source["spec.vxlanMode"] = [2]string{vxName, vx}
		} else {
			errs = append(errs, &EnvError{Variable: vxName, Value: vx, Rule: modeRule})
		}
	}
	if ip != "" {
		switch m, ok := parseEnvMode(ip); {
		case !ok:
			errs = append(errs, &EnvError{Variable: ipName, Value: ip, Rule: modeRule})
		case m != EncapNever:
			errs = append(errs, &EnvError{Variable: ipName, Value: ip, Rule: fmt.Sprintf(
				"IPIP is not built in Twill; set %s=never and %s to always or crosssubnet", ipName, vxName)})
		default:
			p.Spec.IPIPMode = m
		}
	}

	name, v = poolEnv(getenv, "NAT_OUTGOING")
	if v != "" {
		b, err := strconv.ParseBool(strings.ToLower(strings.TrimSpace(v)))
		if err != nil {
			errs = append(errs, &EnvError{Variable: name, Value: v, Err: err, Rule: "must be true or false"})
		} else {
			p.Spec.NATOutgoing = b
		}
	}

	name, v = poolEnv(getenv, "NODE_SELECTOR")
	if v != "" {
		p.Spec.NodeSelector = v
		source["spec.nodeSelector"] = [2]string{name, v}
	}

	if len(errs) > 0 {
		return IPPool{}, errors.Join(errs...)
	}
	p.Default()
	if pfx, err := p.Prefix(); err == nil && !pfx.Addr().Is4() {
		src := source["spec.cidr"]
		return IPPool{}, &EnvError{Variable: src[0], Value: src[1], Rule: "must be an IPv4 network, for example 10.244.0.0/16"}
	}
	if err := p.Validate(); err != nil {
		var ve *ValidationError
		if !errors.As(err, &ve) {
			return IPPool{}, fmt.Errorf("default pool from the environment: %w", err)
		}
		for _, fe := range ve.Errors {
			src, ok := source[fe.Field]
			if !ok {
				// A default of ours was refused; name the field.
				errs = append(errs, fmt.Errorf("default pool from the environment: %w", fe))
				continue
			}
			errs = append(errs, &EnvError{Variable: src[0], Value: src[1], Rule: fe.Rule, Err: fe})
		}
		return IPPool{}, errors.Join(errs...)
	}
	return p, nil
}

package dockerenv

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Container is the part of `docker inspect --type container` the e2e tests use.
// Field names and JSON shapes follow the Engine API (moby/moby/api v1.56,
// daemon v29): unset addresses are empty strings and decode to zero netip values.
type Container struct {
	ID    string `json:"Id"`
	Name  string
	State struct {
		Status  string
		Running bool
		Pid     int
	}
	HostConfig struct {
		NetworkMode string
	}
	NetworkSettings struct {
		SandboxID  string
		SandboxKey string
		Networks   map[string]*Endpoint
	}
}

// Endpoint is one entry of NetworkSettings.Networks (the API's EndpointSettings).
type Endpoint struct {
	NetworkID           string
	EndpointID          string
	MacAddress          string
	IPAddress           netip.Addr
	IPPrefixLen         int
	Gateway             netip.Addr
	GlobalIPv6Address   netip.Addr
	GlobalIPv6PrefixLen int
	IPv6Gateway         netip.Addr
	// GwPriority is absent before API 1.48; it then stays 0.
	GwPriority int
	DriverOpts map[string]string
	Aliases    []string
	DNSNames   []string
}

// HardwareAddr parses MacAddress.
func (e *Endpoint) HardwareAddr() (net.HardwareAddr, error) { return net.ParseMAC(e.MacAddress) }

// IPv4Prefix returns IPAddress/IPPrefixLen, or an invalid prefix when the
// endpoint has no IPv4 address.
func (e *Endpoint) IPv4Prefix() netip.Prefix {
	if !e.IPAddress.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(e.IPAddress, e.IPPrefixLen)
}

// IPv6Prefix returns GlobalIPv6Address/GlobalIPv6PrefixLen, or an invalid
// prefix when the endpoint has no global IPv6 address.
func (e *Endpoint) IPv6Prefix() netip.Prefix {
	if !e.GlobalIPv6Address.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(e.GlobalIPv6Address, e.GlobalIPv6PrefixLen)
}

// Network is the part of `docker network inspect` the e2e tests use.
type Network struct {
	Name       string
	ID         string `json:"Id"`
	Driver     string
	EnableIPv4 *bool // absent before API 1.48
	EnableIPv6 bool
	Internal   bool
	IPAM       struct {
		Driver string
		Config []IPAMConfig
	}
	Options    map[string]string
	Containers map[string]struct {
		Name        string
		EndpointID  string
		MacAddress  string
		IPv4Address string // prefix notation, "" when none
		IPv6Address string
	}
}

// IPAMConfig is one subnet of a network.
type IPAMConfig struct {
	Subnet  netip.Prefix
	IPRange netip.Prefix
	Gateway netip.Addr
}

// MTUOption is the driver option that sets a bridge network's MTU.
const MTUOption = "com.docker.network.driver.mtu"

// BridgeNameOption is the driver option that names a bridge network's bridge.
const BridgeNameOption = "com.docker.network.bridge.name"

// MTU returns the network's com.docker.network.driver.mtu option; ok is false
// when the network does not set one (the link then gets the kernel default).
func (n *Network) MTU() (mtu int, ok bool, err error) {
	s, ok := n.Options[MTUOption]
	if !ok {
		return 0, false, nil
	}
	mtu, err = strconv.Atoi(s)
	if err != nil {
		return 0, true, fmt.Errorf("network %s: option %s=%q: %w", n.Name, MTUOption, s, err)
	}
	return mtu, true, nil
}

// Subnets returns the network's IPAM subnets, IPv4 first as Docker lists them.
func (n *Network) Subnets() []netip.Prefix {
	var out []netip.Prefix
	for _, c := range n.IPAM.Config {
		if c.Subnet.IsValid() {
			out = append(out, c.Subnet)
		}
	}
	return out
}

// decodeOne decodes the one-element JSON array that `docker inspect` prints.
func decodeOne[T any](out, what string) (*T, error) {
	var v []T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("decoding docker inspect of %s: %w", what, err)
	}
	if len(v) != 1 {
		return nil, fmt.Errorf("docker inspect of %s: got %d objects, want 1", what, len(v))
	}
	return &v[0], nil
}

package netns

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// maxIfName is the longest interface name Linux accepts (IFNAMSIZ-1).
	maxIfName = 15
	// MaxPrefix is the longest prefix Create accepts; it leaves host
	// names at least 6 characters.
	MaxPrefix = 8
	// bridgeSuffix names the bridge; no host may be called that.
	bridgeSuffix = "br"
	// eth0 is the name of each host's interface inside its namespace.
	eth0 = "eth0"
)

// Network is a bridge in the root namespace plus one namespace per host,
// all named from a prefix (see the package documentation). It is safe for
// concurrent use. Create one with Create and remove it with Destroy.
type Network struct {
	prefix     string
	subnet     netip.Prefix
	bridge     string
	bridgeAddr netip.Addr

	mu        sync.Mutex
	hosts     map[string]*Host
	destroyed bool
}

// Host is one network namespace on a Network: a machine of its own as far
// as the network is concerned.
type Host struct {
	Name string     // as given to AddHost
	Addr netip.Addr // the address of its eth0
	Path string     // its namespace, RunDir/<prefix>-<name>; for Do, ExecIn and `ip netns exec`

	link string // its bridge port in the root namespace
}

// Create makes the bridge "<prefix>-br", gives it the last usable address
// of subnet (so that the root namespace reaches every host) and brings it
// up. prefix is 1 to MaxPrefix lowercase letters or digits, starting with a
// letter; subnet is IPv4 with room for at least two hosts, and must not
// overlap a route of the root namespace. Create refuses to start over
// leftovers with the same prefix; remove those with Sweep.
func Create(prefix string, subnet netip.Prefix) (*Network, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	if !subnet.IsValid() || !subnet.Addr().Is4() || subnet.Bits() > 30 {
		return nil, fmt.Errorf("create network %q: subnet %s is not usable: give an IPv4 prefix of /30 or shorter, e.g. 10.99.0.0/24", prefix, subnet)
	}
	subnet = subnet.Masked()
	n := &Network{
		prefix:     prefix,
		subnet:     subnet,
		bridge:     prefix + "-" + bridgeSuffix,
		bridgeAddr: lastUsable(subnet),
		hosts:      map[string]*Host{},
	}
	if left, err := leftovers(prefix); err != nil {
		return nil, fmt.Errorf("create network %q: %w", prefix, err)
	} else if len(left) > 0 {
		return nil, fmt.Errorf("create network %q: %s already exist, left over from an earlier run or in use by another: remove them with Sweep(%q) or choose another prefix", prefix, strings.Join(left, ", "), prefix)
	}
	if err := checkOverlap(subnet); err != nil {
		return nil, fmt.Errorf("create network %q: %w", prefix, err)
	}

	// A fixed address, or the bridge takes the lowest of its ports' and
	// changes it as hosts come and go, staling the hosts' ARP caches.
	mac := make(net.HardwareAddr, 6)
	rand.Read(mac)
	mac[0] = mac[0]&^1 | 2 // unicast, locally administered
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge, HardwareAddr: mac}}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("create bridge %s: %w%s", n.bridge, err, hint(err))
	}
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.bridgeAddr, subnet.Bits()))}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return nil, errors.Join(fmt.Errorf("add address %s to bridge %s: %w%s", addr.IPNet, n.bridge, err, hint(err)), deleteLink(n.bridge))
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, errors.Join(fmt.Errorf("bring up bridge %s: %w%s", n.bridge, err, hint(err)), deleteLink(n.bridge))
	}
	return n, nil
}

// Prefix returns the prefix every name of the network starts with.
func (n *Network) Prefix() string { return n.prefix }

// Subnet returns the network's subnet.
func (n *Network) Subnet() netip.Prefix { return n.subnet }

// BridgeAddr returns the root namespace's address on the network: the last
// usable address of the subnet, which no host may take.
func (n *Network) BridgeAddr() netip.Addr { return n.bridgeAddr }

// AddHost makes the namespace RunDir/<prefix>-<name> with an interface
// eth0 holding addr (with the subnet's prefix length), plugged into the
// bridge through the port "<prefix>-<name>", and brings up lo and eth0.
// name is lowercase letters and digits, at most 14-len(prefix) of them, and
// not "br". If it fails, AddHost removes what it made.
func (n *Network) AddHost(name string, addr netip.Addr) (*Host, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.checkHost(name, addr); err != nil {
		return nil, err
	}
	h := &Host{Name: name, Addr: addr, link: n.prefix + "-" + name}
	if err := n.makeHost(h); err != nil {
		return nil, err
	}
	n.hosts[name] = h
	return h, nil
}

func (n *Network) checkHost(name string, addr netip.Addr) error {
	if n.destroyed {
		return fmt.Errorf("add host %q to network %q: the network was destroyed; create a new one", name, n.prefix)
	}
	if err := checkHostName(n.prefix, name); err != nil {
		return err
	}
	if _, ok := n.hosts[name]; ok {
		return fmt.Errorf("add host %q to network %q: a host has that name already; choose another", name, n.prefix)
	}
	if !n.subnet.Contains(addr) || addr == n.subnet.Addr() || addr == n.bridgeAddr.Next() { // network or broadcast address
		return fmt.Errorf("add host %q to network %q: address %s is not a host address of %s; choose one in %s-%s", name, n.prefix, addr, n.subnet, n.subnet.Addr().Next(), n.bridgeAddr.Prev())
	}
	if addr == n.bridgeAddr {
		return fmt.Errorf("add host %q to network %q: address %s belongs to the bridge; choose one in %s-%s", name, n.prefix, addr, n.subnet.Addr().Next(), n.bridgeAddr.Prev())
	}
	for _, h := range n.hosts {
		if h.Addr == addr {
			return fmt.Errorf("add host %q to network %q: address %s is taken by host %q; choose another", name, n.prefix, addr, h.Name)
		}
	}
	return nil
}

// makeHost creates h's namespace and veth pair, undoing its steps if a
// later one fails.
func (n *Network) makeHost(h *Host) (err error) {
	var undo []func() error
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				err = errors.Join(err, undo[i]())
			}
			err = fmt.Errorf("add host %q to network %q: %w", h.Name, n.prefix, err)
		}
	}()

	path, err := createNamed(h.link)
	if err != nil {
		return err
	}
	h.Path = path
	undo = append(undo, func() error { return removeNamed(path) })

	ns, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer unix.Close(ns)

	// The peer is created directly inside the namespace, so "eth0" never
	// clashes with the root namespace's own interfaces.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: h.link},
		PeerName:      eth0,
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth pair %s / %s:%s: %w%s", h.link, path, eth0, err, hint(err))
	}
	undo = append(undo, func() error { return deleteLink(h.link) })

	br, err := netlink.LinkByName(n.bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w (was the network destroyed or swept?)", n.bridge, err)
	}
	if err := netlink.LinkSetMaster(veth, br); err != nil {
		return fmt.Errorf("attach %s to bridge %s: %w%s", h.link, n.bridge, err, hint(err))
	}
	if err := setupInside(ns, path, netip.PrefixFrom(h.Addr, n.subnet.Bits())); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("bring up %s: %w%s", h.link, err, hint(err))
	}
	return nil
}

// setupInside brings up lo and eth0 inside the namespace and gives eth0
// its address.
func setupInside(ns int, path string, addr netip.Prefix) error {
	nh, err := netlink.NewHandleAt(vns.NsHandle(ns))
	if err != nil {
		return fmt.Errorf("open netlink in %s: %w%s", path, err, hint(err))
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", path, err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in %s: %w%s", path, err, hint(err))
	}
	eth, err := nh.LinkByName(eth0)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", eth0, path, err)
	}
	if err := nh.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("add address %s to %s in %s: %w%s", addr, eth0, path, err, hint(err))
	}
	if err := nh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring up %s in %s: %w%s", eth0, path, err, hint(err))
	}
	return nil
}

// SetLinkUp plugs the host's cable back in (true) or pulls it out (false):
// it sets the host's bridge port up or down. With the port down the host
// keeps its address and routes but its eth0 has no carrier, so packets to
// and from it are dropped and dials time out or find no route, as with a
// partitioned machine.
func (h *Host) SetLinkUp(up bool) error {
	link, err := netlink.LinkByName(h.link)
	if err != nil {
		return fmt.Errorf("set link of host %q: find %s: %w (was the network destroyed?)", h.Name, h.link, err)
	}
	set, state := netlink.LinkSetDown, "down"
	if up {
		set, state = netlink.LinkSetUp, "up"
	}
	if err := set(link); err != nil {
		return fmt.Errorf("set link of host %q %s: %w%s", h.Name, state, err, hint(err))
	}
	return nil
}

// Destroy removes every host's namespace and veth pair and the bridge:
// everything named with the network's prefix. It keeps going when a step
// fails and returns all the errors joined. Calling it again is harmless.
// Processes still running inside a namespace keep it alive, cut off from
// the network, until they exit.
func (n *Network) Destroy() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.destroyed = true
	if err := Sweep(n.prefix); err != nil {
		return fmt.Errorf("destroy network %q: %w", n.prefix, err)
	}
	return nil
}

// Sweep removes every namespace under RunDir and every link of the root
// namespace named with prefix, such as an earlier run that crashed left
// behind. Bridge ports go first, then namespaces, then the bridge. It keeps
// going when a step fails and returns all the errors joined.
func Sweep(prefix string) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	links, err := linksWithPrefix(prefix + "-")
	if err != nil {
		return fmt.Errorf("sweep %q: %w", prefix, err)
	}
	var errs []error
	bridge := prefix + "-" + bridgeSuffix
	for _, name := range links {
		if name != bridge {
			errs = append(errs, deleteLink(name))
		}
	}
	paths, err := namedWithPrefix(prefix + "-")
	errs = append(errs, err)
	for _, p := range paths {
		errs = append(errs, removeNamed(p))
	}
	errs = append(errs, deleteLink(bridge))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweep %q: %w", prefix, err)
	}
	return nil
}

// leftovers names what already exists with prefix.
func leftovers(prefix string) ([]string, error) {
	links, err := linksWithPrefix(prefix + "-")
	if err != nil {
		return nil, err
	}
	paths, err := namedWithPrefix(prefix + "-")
	if err != nil {
		return nil, err
	}
	var left []string
	for _, l := range links {
		left = append(left, "link "+l)
	}
	for _, p := range paths {
		left = append(left, "namespace "+p)
	}
	return left, nil
}

// CheckFree says whether subnet is free for a new network: it must not
// overlap a route of the root namespace (the default route aside), such
// as another network's bridge.
func CheckFree(subnet netip.Prefix) error { return checkOverlap(subnet.Masked()) }

// checkOverlap refuses a subnet that overlaps a route of the root
// namespace (the default route aside): the bridge's route would shadow it
// or be shadowed.
func checkOverlap(subnet netip.Prefix) error {
	var routes []netlink.Route
	err := retryDump(func() (err error) {
		routes, err = netlink.RouteList(nil, netlink.FAMILY_V4)
		return err
	})
	if err != nil {
		return fmt.Errorf("list routes: %w%s", err, hint(err))
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		ip, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok || ones == 0 {
			continue
		}
		dst := netip.PrefixFrom(ip, ones).Masked()
		if dst.Overlaps(subnet) {
			dev := fmt.Sprint("link ", r.LinkIndex)
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			return fmt.Errorf("subnet %s overlaps the route to %s on %s: choose another subnet (or sweep %s if it is a leftover)", subnet, dst, dev, dev)
		}
	}
	return nil
}

// linksWithPrefix names the root namespace's links that start with prefix.
func linksWithPrefix(prefix string) ([]string, error) {
	var links []netlink.Link
	err := retryDump(func() (err error) {
		links, err = netlink.LinkList()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list links: %w%s", err, hint(err))
	}
	var names []string
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	return names, nil
}

// retryDump retries a netlink dump that another process's changes
// interrupted.
func retryDump(dump func() error) error {
	var err error
	for range 10 {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}

// deleteLink deletes a link of the root namespace by name; one that is
// already gone is not an error. Deleting either end of a veth pair deletes
// both.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if _, ok := err.(netlink.LinkNotFoundError); ok {
			return nil
		}
		return fmt.Errorf("find link %s: %w%s", name, err, hint(err))
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w%s", name, err, hint(err))
	}
	return nil
}

func checkPrefix(prefix string) error {
	if len(prefix) == 0 || len(prefix) > MaxPrefix || !isLowerAlnum(prefix) || prefix[0] < 'a' || prefix[0] > 'z' {
		return fmt.Errorf("network prefix %q is not usable: give 1 to %d lowercase letters or digits, starting with a letter (interface names are limited to %d bytes)", prefix, MaxPrefix, maxIfName)
	}
	return nil
}

func checkHostName(prefix, name string) error {
	max := maxIfName - len(prefix) - 1
	if len(name) == 0 || len(name) > max || !isLowerAlnum(name) {
		return fmt.Errorf("host name %q is not usable in network %q: give 1 to %d lowercase letters or digits (interface names are limited to %d bytes)", name, prefix, max, maxIfName)
	}
	if name == bridgeSuffix {
		return fmt.Errorf("host name %q is not usable in network %q: it names the bridge; choose another", name, prefix)
	}
	return nil
}

func isLowerAlnum(s string) bool {
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// lastUsable returns the address before the broadcast address of an IPv4
// subnet.
func lastUsable(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	v--
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

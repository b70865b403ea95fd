// Package netns builds the network of `mosaic up --netns`: several cluster
// nodes on one machine, each in a network namespace of its own, all plugged
// into one Linux bridge. Failures then behave as between separate hosts: a
// killed daemon resets its connections, a link taken down (Host.SetLinkUp)
// or an iptables DROP inside a namespace makes dials time out, and nothing
// short-circuits through the root namespace's loopback.
//
// Everything is named from a short prefix so that an earlier run that
// crashed can be cleaned up by name (Sweep). For prefix "mt" and hosts "a"
// and "b":
//
//	bridge      mt-br              in the root namespace, holding the
//	                               subnet's last usable address
//	namespace   /run/netns/mt-a    a bind mount, as `ip netns add mt-a`
//	                               makes, so `ip netns exec mt-a ...` works
//	veth        mt-a  <->  eth0    mt-a is a bridge port in the root
//	                               namespace, eth0 lives inside mt-a
//
// A process is put inside a namespace in one of two ways: Do runs a
// function on an OS thread switched into it (tests, setup), and ExecIn
// replaces the whole process image with a program that runs entirely
// inside it (`mosaic node --netns PATH` re-executes itself this way).
//
// Everything here needs root (CAP_NET_ADMIN for links, CAP_SYS_ADMIN for
// namespaces and mounts) and only IPv4 subnets are supported.
package netns

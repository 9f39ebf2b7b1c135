// Package view is the data model of one network namespace as netmon sees
// it: links (with their addresses and the facts about their peer or parent
// in another netns), routes, and the kernel constants needed to read them.
//
// It owns the types and nothing else: no I/O, no netlink, only the standard
// library, so the pure packages that read a view (matcher, hotplug) never
// link a socket library. netmon fills a Snapshot; matcher decides over it;
// hotplug converts it into the sandbox's types.
package view

package daemon

import (
	"errors"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

// domainCloneOptions say how a cloned libvirt domain differs.
type domainCloneOptions struct {
	Name, UUID, NVRAM string
	Disks             map[string]string
	MAC               func(string) string
}

// domainNVRAM returns the UEFI variable store a domain XML names.
func domainNVRAM(string) string { return "" }

// domainDisks returns the disks of a domain XML.
func domainDisks(string) []hypervisor.LaunchDisk { return nil }

// cloneDomainXML rewrites a domain XML for a clone.
func cloneDomainXML(string, domainCloneOptions) (string, error) {
	return "", errors.New("not yet")
}

package daemon

import "github.com/twinsnap/twinsnap/internal/hypervisor"

// domainNVRAM returns the UEFI variable store a domain XML names, or "".
func domainNVRAM(xml string) string {
	p, err := hypervisor.DomainNVRAM(xml)
	if err != nil {
		return ""
	}
	return p
}

// domainDisks returns the disks of a domain XML (none when it does not
// parse).
func domainDisks(xml string) []hypervisor.LaunchDisk {
	d, _ := hypervisor.DomainDisks(xml)
	return d
}

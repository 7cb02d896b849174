package hypervisor

// DomainCharPaths returns the host files of a domain's serial, console,
// parallel and channel devices (their <source path> for file, unix and
// pipe devices, and their <log file>): the paths a clone must be given
// its own copies of (DomainCloneOptions.Paths). Channel sockets libvirt
// made for the domain are included; CloneDomainXML drops those it is not
// given a mapping for.
func DomainCharPaths(domainXML string) ([]string, error) {
	root, err := parseDomainXML(domainXML)
	if err != nil {
		return nil, err
	}
	var out []string
	devs := root.child("devices")
	if devs == nil {
		return nil, nil
	}
	for _, dev := range devs.kids {
		switch dev.name {
		case "serial", "console", "parallel", "channel":
		default:
			continue
		}
		typ, _ := dev.attr("type")
		if typ == "file" || typ == "pipe" {
			for _, src := range dev.children("source") {
				if p, ok := src.attr("path"); ok {
					out = appendUnique(out, p)
				}
			}
		}
		if lg := dev.child("log"); lg != nil {
			if f, ok := lg.attr("file"); ok {
				out = appendUnique(out, f)
			}
		}
	}
	return out, nil
}

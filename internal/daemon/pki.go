package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/twinsnap/twinsnap/cluster/pki"
)

// DefaultCertValidity is how long node and admin certificates are valid.
const DefaultCertValidity = 2 * 365 * 24 * time.Hour

// DefaultCAValidity is how long a cluster CA is valid.
const DefaultCAValidity = 10 * 365 * 24 * time.Hour

// InitCA creates a cluster CA in dir (ca.crt, ca.key). It refuses to
// overwrite an existing CA.
func InitCA(dir, name string, validity time.Duration) (*pki.CA, error) {
	ca, err := pki.NewCA(name, validity)
	if err != nil {
		return nil, err
	}
	if err := ca.Save(dir); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("a cluster CA already exists in %s; refusing to overwrite it: %w", dir, err)
		}
		return nil, err
	}
	return ca, nil
}

// IssueNode writes a node bundle (ca.crt, <id>.crt, <id>.key) into out,
// signed by the CA in caDir, valid for the given host names and addresses.
func IssueNode(caDir, out, id string, hosts []string, validity time.Duration) (*pki.Bundle, error) {
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		return nil, err
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("%w: a node certificate needs at least one host name or address (--host)", ErrConfig)
	}
	b, err := ca.IssueNode(id, validity, hosts...)
	if err != nil {
		return nil, err
	}
	return b, pki.WriteBundle(out, b)
}

// IssueAdmin writes an admin bundle (ca.crt, <name>.crt, <name>.key) into
// out, signed by the CA in caDir.
func IssueAdmin(caDir, out, name string, validity time.Duration) (*pki.Bundle, error) {
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		return nil, err
	}
	b, err := ca.IssueAdmin(name, validity)
	if err != nil {
		return nil, err
	}
	return b, pki.WriteBundle(out, b)
}

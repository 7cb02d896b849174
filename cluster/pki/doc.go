// Package pki is the public-key infrastructure of one twinsnap cluster: its
// certificate authority, the certificates it issues to nodes and admins, the
// files they live in, and the TLS configurations every twinsnap channel uses.
//
// # Trust model
//
// Each cluster has exactly one CA, created when the cluster is bootstrapped
// ([NewCA], saved with [CA.Save] as ca.crt and ca.key). Trust is that CA and
// nothing else: no system roots, no intermediates (the CA certificate has a
// path length of zero), no other cluster's CA. Two clusters therefore never
// trust each other's certificates, even if node ids or admin names collide.
//
// Every certificate the CA issues names its holder in a URI subject
// alternative name, twinsnap://<role>/<name>, and [Identity] reads it back.
// Servers authorise by that role, not merely by "the chain is valid":
//
//   - node (twinsnap://node/<id>): data nodes and the witness. Extended key
//     usage server and client authentication; DNS and IP SANs for the node's
//     addresses. A node may reach the Raft port of another node, the snapshot
//     replication port of a data node, and the HTTP API (to forward writes to
//     the leader). A node certificate is the only certificate a twinsnap
//     client accepts from a server.
//   - admin (twinsnap://admin/<name>): operators running the admin CLI.
//     Extended key usage client authentication only, so an admin certificate
//     cannot serve anything. An admin may reach the HTTP API and nothing else;
//     the Raft and replication ports refuse it during the handshake.
//
// The witness holds a node certificate like the data nodes; a server that
// must tell a data node from the witness (snapshot replication) checks the
// peer's node id against the cluster membership.
//
// # Channels
//
// [ServerConfig] and [ClientConfig] build the only TLS configurations a
// twinsnap endpoint uses: TLS 1.3 only, client certificates required and
// verified against the cluster CA, the peer's role checked during the
// handshake (a refused peer never yields a connection), session tickets off
// so that every connection is verified afresh. Clients verify the server's
// identity (role and, when known, node id) rather than its host name, since
// peers are usually addressed by IP; see [ClientConfig].
//
// # Files
//
// A CA directory holds ca.crt, ca.key and cluster.key. Every holder has a
// [Bundle] directory with ca.crt, <name>.crt and <name>.key; a node's also
// holds a copy of cluster.key, an admin's never does. Private keys and the
// cluster key are written with mode 0600 and refused on load when group or
// others can read them.
//
// # Cluster key
//
// The cluster key ([ClusterKey]) is 32 random bytes created with the CA.
// It seals secrets the cluster must replicate but never hold in clear text
// (the passwords of export shares): [ClusterKey.Seal] is AES-256-GCM under
// a key derived with HKDF-SHA256 for that purpose, with a random nonce and
// the record's name as additional data, and [ClusterKey.Open] fails with
// [ErrSealed] for anything changed, sealed under another key or moved to
// another record. [ClusterKey.ID] is a short fingerprint that records store
// beside the sealed bytes. A CA directory made before cluster keys gets one
// the first time [LoadCA] reads it; a node directory without one
// ([LoadClusterKey] fails with [ErrNoClusterKey]) gets it from the next
// `twinsnapd tls node`. The key cannot be rotated yet.
//
// # Errors
//
// Failures wrap one of the sentinel errors ([ErrUntrusted], [ErrExpired],
// [ErrWrongRole], [ErrWrongName], [ErrNoCertificate], [ErrNoIdentity],
// [ErrNoClusterKey], [ErrSealed], …) with
// %w; [Classify] maps the standard library's handshake errors onto them.
//
// Keys are ECDSA P-256 rather than Ed25519: Go's TLS 1.3 handles both, but
// P-256 is the one every other client an operator may point at the API
// (curl, openssl s_client, browsers, hardware tokens) accepts, and it is
// approved in FIPS 140 modes.
package pki

// Package api defines the HTTP/JSON API of a twinsnap node and the Go client
// that the admin CLI uses to call it.
package api

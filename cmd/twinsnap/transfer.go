package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/pflag"
)

// transferOptions are the flags that bound when and how fast an export or
// an import moves data.
type transferOptions struct {
	window   string
	days     string
	location string
	bwlimit  string
}

// transferLimits are transferOptions checked: what the API requests
// carry.
type transferLimits struct {
	window, days, location string
	bandwidthBytes         int64
}

// addTransferFlags adds --window, --days, --tz and --bwlimit; what names
// the job ("export", "import") in their help.
func addTransferFlags(f *pflag.FlagSet, o *transferOptions, what string) {
	f.StringVar(&o.window, "window", "",
		"maintenance window HH:MM[:SS]-HH:MM[:SS] (22:00-04:00 ends the next day); the "+what+" moves data only inside it and pauses at its end (default: any time)")
	f.StringVar(&o.days, "days", "", "days the window opens on: mon-fri, sat,sun, ... (default every day; needs --window)")
	f.StringVar(&o.location, "tz", "", "time zone of the window, such as Europe/Berlin (default UTC; needs --window)")
	f.StringVar(&o.bwlimit, "bwlimit", "", "bandwidth limit in bytes per second: 50MiB/s, 800KiB/s, 1GiB/s or plain bytes (default none)")
}

// limits checks the flags' form; the server checks them fully.
func (o transferOptions) limits() (transferLimits, error) {
	l := transferLimits{window: o.window, days: o.days, location: o.location}
	if o.window == "" && (o.days != "" || o.location != "") {
		return l, usagef("--days and --tz describe the maintenance window: give --window too")
	}
	if o.window != "" {
		if err := checkWindowForm(o.window); err != nil {
			return l, err
		}
	}
	if o.bwlimit != "" {
		n, err := parseBandwidth(o.bwlimit)
		if err != nil {
			return l, err
		}
		l.bandwidthBytes = n
	}
	return l, nil
}

// checkWindowForm checks that s looks like HH:MM[:SS]-HH:MM[:SS] with
// hours 00-24 and minutes and seconds 00-59. Whether the span makes
// sense (start and end differ, 24:00 only as an end) is the server's to
// say.
func checkWindowForm(s string) error {
	from, to, ok := strings.Cut(s, "-")
	if !ok {
		return usagef("--window %q is not START-END in HH:MM or HH:MM:SS, such as 22:00-04:00", s)
	}
	for _, clock := range []string{from, to} {
		if err := checkClockForm(clock); err != nil {
			return usagef("--window %q: %w (HH:MM or HH:MM:SS, such as 22:00-04:00)", s, err)
		}
	}
	return nil
}

// checkClockForm checks one HH:MM or HH:MM:SS.
func checkClockForm(s string) error {
	parts := strings.Split(s, ":")
	if len(parts) != 2 && len(parts) != 3 {
		return fmt.Errorf("%q is not HH:MM or HH:MM:SS", s)
	}
	fields := []struct {
		name string
		max  int
	}{{"hour", 24}, {"minute", 59}, {"second", 59}}
	for i, p := range parts {
		if len(p) != 2 || p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9' {
			return fmt.Errorf("%q: %q is not two digits", s, p)
		}
		if v := int(p[0]-'0')*10 + int(p[1]-'0'); v > fields[i].max {
			return fmt.Errorf("%q: %s %s is not 00-%d", s, fields[i].name, p, fields[i].max)
		}
	}
	return nil
}

// errRateSyntax is the message for a bandwidth limit that does not parse.
var errRateSyntax = errors.New("give bytes per second: a number of bytes, or a number with KiB, MiB, GiB or TiB, optionally followed by /s, such as 50MiB/s, 800KiB/s or 1GiB/s")

// parseBandwidth parses a bandwidth limit: a size as parseSize takes it
// (bytes, or a number with a binary unit), optionally followed by "/s".
func parseBandwidth(s string) (int64, error) {
	size := strings.TrimSuffix(s, "/s")
	n, err := parseSize(size)
	switch {
	case err == nil:
		return n, nil
	case size == "" || errors.Is(err, errSizeSyntax):
		return 0, usagef("--bwlimit %q is not a rate: %w", s, errRateSyntax)
	}
	return 0, usagef("--bwlimit %q: %w", s, err)
}

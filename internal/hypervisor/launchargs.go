package hypervisor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// This file holds the syntax of a QEMU command line: which options take a
// value, QEMU's "key=value,..." lists (QemuOpts and keyval) with their ",,"
// escape, JSON option values, and the character-device shorthands of
// -serial, -qmp and -monitor. launch.go reads a command line with them and
// launchclone.go rewrites one.

// flagOptions are QEMU's options that take no value (QEMU 7.2's
// qemu-options.hx, plus spellings older releases accepted).
var flagOptions = map[string]bool{
	"-h": true, "-help": true, "-version": true, "-audio-help": true,
	"-mem-prealloc": true, "-snapshot": true, "-usb": true, "-nographic": true,
	"-portrait": true, "-full-screen": true, "-win2k-hack": true,
	"-no-fd-bootchk": true, "-no-acpi": true, "-no-hpet": true,
	"-singlestep": true, "-S": true, "-s": true, "-enable-kvm": true,
	"-xen-attach": true, "-xen-domid-restrict": true, "-no-reboot": true,
	"-no-shutdown": true, "-daemonize": true, "-only-migratable": true,
	"-nodefaults": true, "-no-user-config": true, "-async-teardown": true,
	"-enable-sync-profile": true, "-preconfig": true, "-alt-grab": true,
	"-ctrl-grab": true, "-no-quit": true, "-enable-fips": true,
	"-semihosting": true, "-curses": true, "-sdl": true, "-no-frame": true,
	"-nodefconfig": true, "-no-kvm": true, "-rtc-td-hack": true,
	"-no-kvm-pit-reinjection": true, "-no-kvm-irqchip": true, "-tdf": true,
	"-old-param": true,
}

// valueOptions are QEMU's options that take a value, which is the next
// argument whatever it looks like (an -append line may start with a dash).
// An option in neither table takes the next argument unless that one
// starts with a dash.
var valueOptions = map[string]bool{
	"-machine": true, "-M": true, "-cpu": true, "-accel": true, "-smp": true,
	"-numa": true, "-add-fd": true, "-set": true, "-global": true, "-boot": true,
	"-m": true, "-mem-path": true, "-k": true, "-audio": true, "-audiodev": true,
	"-device": true, "-name": true, "-uuid": true, "-fda": true, "-fdb": true,
	"-hda": true, "-hdb": true, "-hdc": true, "-hdd": true, "-cdrom": true,
	"-blockdev": true, "-drive": true, "-mtdblock": true, "-sd": true,
	"-fsdev": true, "-virtfs": true, "-iscsi": true, "-usbdevice": true,
	"-display": true, "-spice": true, "-rotate": true, "-vga": true, "-vnc": true,
	"-acpitable": true, "-smbios": true, "-netdev": true, "-nic": true,
	"-net": true, "-chardev": true, "-tpmdev": true, "-bios": true,
	"-pflash": true, "-kernel": true, "-append": true, "-initrd": true,
	"-dtb": true, "-compat": true, "-fw_cfg": true, "-serial": true,
	"-parallel": true, "-monitor": true, "-qmp": true, "-qmp-pretty": true,
	"-mon": true, "-debugcon": true, "-pidfile": true, "-overcommit": true,
	"-gdb": true, "-d": true, "-D": true, "-dfilter": true, "-seed": true,
	"-L": true, "-xen-domid": true, "-action": true, "-loadvm": true,
	"-option-rom": true, "-rtc": true, "-icount": true, "-watchdog-action": true,
	"-echr": true, "-incoming": true, "-chroot": true, "-runas": true,
	"-sandbox": true, "-readconfig": true, "-writeconfig": true, "-trace": true,
	"-plugin": true, "-msg": true, "-dump-vmstate": true, "-object": true,
	"-watchdog": true, "-semihosting-config": true, "-g": true,
	"-device-help": true,
}

// qarg is one option of a QEMU command line with its value, or a
// positional argument (which QEMU takes as the first hard disk's image).
type qarg struct {
	// opt is the option with one leading dash ("-drive"); "" for a
	// positional argument.
	opt string
	// spelled is the option as written ("--drive").
	spelled string
	val     string
	hasVal  bool
}

// splitArgs splits a QEMU command line (without the binary) into options.
func splitArgs(args []string) []qarg {
	var out []qarg
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) < 2 || a[0] != '-' {
			out = append(out, qarg{val: a, hasVal: true})
			continue
		}
		opt := a
		if strings.HasPrefix(opt, "--") {
			opt = opt[1:]
		}
		q := qarg{opt: opt, spelled: a}
		takes := valueOptions[opt] ||
			(!flagOptions[opt] && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-"))
		if takes && i+1 < len(args) {
			q.val, q.hasVal = args[i+1], true
			i++
		}
		out = append(out, q)
	}
	return out
}

// optValue is a structured option value: a "key=value,..." list, a JSON
// object, a character-device shorthand or a plain value. Keys of nested
// members are dotted paths ("file.filename"), as in QEMU's keyval syntax.
type optValue interface {
	// get returns the value of key (the last one when repeated).
	get(key string) (string, bool)
	// set replaces the value of every occurrence of key; it reports
	// whether there was one.
	set(key, val string) bool
	// each calls fn for every member, in order.
	each(fn func(key, val string))
	// String renders the value as QEMU reads it.
	String() string
}

// kvPart is one member of a "key=value,..." list.
type kvPart struct {
	key string
	val string
	// form is how the member was written.
	form kvForm
}

// kvForm is how a member of a "key=value,..." list is written.
type kvForm uint8

const (
	kvPair    kvForm = iota // key=value
	kvImplied               // a bare value for the option's implied key ("-device virtio-blk-pci")
	kvFlag                  // a bare key: key=on, or noKEY for KEY=off
)

// kvList is a "key=value,..." list as QemuOpts and keyval read it: a
// comma inside a value is written twice, the first member may be a bare
// value for the option's implied key, and a later bare word is a boolean
// flag.
type kvList struct {
	parts []kvPart
	pos   map[string][]int // key -> indexes of its parts; built on demand
}

// positions returns the index of parts by key.
func (l *kvList) positions() map[string][]int {
	if l.pos == nil {
		l.pos = make(map[string][]int, len(l.parts))
		for i, p := range l.parts {
			l.pos[p.key] = append(l.pos[p.key], i)
		}
	}
	return l.pos
}

var _ optValue = (*kvList)(nil)

// parseKV parses s; implied names the option's implied key ("" for none).
func parseKV(s, implied string) *kvList {
	l := &kvList{}
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] != '=' && s[j] != ',' {
			j++
		}
		switch {
		case j < len(s) && s[j] == '=':
			val, next := kvValue(s, j+1)
			l.parts = append(l.parts, kvPart{key: s[i:j], val: val, form: kvPair})
			i = next
		case i == 0 && implied != "":
			val, next := kvValue(s, i)
			l.parts = append(l.parts, kvPart{key: implied, val: val, form: kvImplied})
			i = next
		default:
			l.parts = append(l.parts, kvPart{key: s[i:j], form: kvFlag})
			i = j + 1
		}
	}
	return l
}

// kvValue reads a value starting at s[i] up to a single comma, and
// returns it unescaped with the index after that comma.
func kvValue(s string, i int) (string, int) {
	var b strings.Builder
	for i < len(s) {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				b.WriteByte(',')
				i += 2
				continue
			}
			return b.String(), i + 1
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String(), i
}

// get implements optValue. A flag reads as "on" ("off" for noKEY).
func (l *kvList) get(key string) (string, bool) {
	pos := l.positions()
	last, lastNo := -1, -1
	if ps := pos[key]; len(ps) > 0 {
		last = ps[len(ps)-1]
	}
	for _, i := range pos["no"+key] {
		if l.parts[i].form == kvFlag {
			lastNo = i
		}
	}
	switch {
	case lastNo > last:
		return "off", true
	case last < 0:
		return "", false
	case l.parts[last].form == kvFlag:
		return "on", true
	}
	return l.parts[last].val, true
}

// set implements optValue.
func (l *kvList) set(key, val string) bool {
	ps := l.positions()[key]
	for _, i := range ps {
		p := &l.parts[i]
		if p.form == kvFlag {
			p.form = kvPair
		}
		p.val = val
	}
	return len(ps) > 0
}

// add appends key=val.
func (l *kvList) add(key, val string) {
	l.parts = append(l.parts, kvPart{key: key, val: val, form: kvPair})
	l.pos = nil
}

// del removes every occurrence of key.
func (l *kvList) del(key string) {
	kept := l.parts[:0]
	for _, p := range l.parts {
		if p.key != key {
			kept = append(kept, p)
		}
	}
	l.parts = kept
	l.pos = nil
}

// each implements optValue; flags are left out.
func (l *kvList) each(fn func(key, val string)) {
	for _, p := range l.parts {
		if p.form != kvFlag {
			fn(p.key, p.val)
		}
	}
}

// String implements optValue.
func (l *kvList) String() string {
	var b strings.Builder
	for i, p := range l.parts {
		if i > 0 {
			b.WriteByte(',')
		}
		switch {
		case p.form == kvFlag:
			b.WriteString(p.key)
		case p.form == kvImplied && i == 0 && p.val != "" && !strings.Contains(p.val, "="):
			b.WriteString(kvEscape(p.val))
		default:
			// A value with "=" cannot stay implied: QEMU would read
			// what precedes it as a key.
			b.WriteString(p.key + "=" + kvEscape(p.val))
		}
	}
	return b.String()
}

// kvEscape doubles the commas of a value.
func kvEscape(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// maxJSONDepth bounds the nesting of a JSON option value.
const maxJSONDepth = 32

// jsonNode is a JSON value that keeps the order of object members and the
// text of numbers, so that a rewritten option differs from the original
// only where it was changed.
type jsonNode struct {
	kind    byte // '{' object, '[' array, 's' string, 'v' other scalar
	members []jsonMember
	elems   []*jsonNode
	str     string
	raw     json.RawMessage
}

// jsonMember is one member of a JSON object.
type jsonMember struct {
	key string
	val *jsonNode
}

// jsonValue is a JSON option value ('-blockdev {"driver":...}'), with its
// scalars indexed by dotted path (the tree never changes shape; set only
// changes strings).
type jsonValue struct {
	root  *jsonNode
	index map[string][]*jsonNode
}

var _ optValue = jsonValue{}

// parseJSONValue parses a JSON object; duplicate keys are refused (QEMU
// refuses them too).
func parseJSONValue(s string) (jsonValue, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	root, err := parseJSONNode(dec, 0)
	if err != nil {
		return jsonValue{}, err
	}
	if root.kind != '{' {
		return jsonValue{}, errors.New("not a JSON object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return jsonValue{}, errors.New("trailing data after the JSON object")
	}
	v := jsonValue{root: root, index: map[string][]*jsonNode{}}
	root.walk("", func(path string, leaf *jsonNode) { v.index[path] = append(v.index[path], leaf) })
	return v, nil
}

// parseJSONNode reads one value from dec.
func parseJSONNode(dec *json.Decoder, depth int) (*jsonNode, error) {
	if depth > maxJSONDepth {
		return nil, fmt.Errorf("JSON nested deeper than %d", maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n := &jsonNode{kind: '{'}
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key, ok := kt.(string)
				if !ok {
					return nil, errors.New("JSON object key is not a string")
				}
				if seen[key] {
					return nil, fmt.Errorf("duplicate JSON key %q", key)
				}
				seen[key] = true
				v, err := parseJSONNode(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.members = append(n.members, jsonMember{key: key, val: v})
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return n, nil
		case '[':
			n := &jsonNode{kind: '['}
			for dec.More() {
				v, err := parseJSONNode(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.elems = append(n.elems, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return n, nil
		}
		return nil, fmt.Errorf("unexpected JSON delimiter %v", t)
	case string:
		return &jsonNode{kind: 's', str: t}, nil
	case json.Number:
		return &jsonNode{kind: 'v', raw: json.RawMessage(t.String())}, nil
	case bool:
		return &jsonNode{kind: 'v', raw: json.RawMessage(strconv.FormatBool(t))}, nil
	case nil:
		return &jsonNode{kind: 'v', raw: json.RawMessage("null")}, nil
	}
	return nil, fmt.Errorf("unexpected JSON token %v", tok)
}

// walk calls fn for every scalar below n with its dotted path.
func (n *jsonNode) walk(prefix string, fn func(path string, leaf *jsonNode)) {
	switch n.kind {
	case '{':
		for _, m := range n.members {
			m.val.walk(prefix+m.key+".", fn)
		}
	case '[':
		for i, e := range n.elems {
			e.walk(prefix+strconv.Itoa(i)+".", fn)
		}
	default:
		fn(strings.TrimSuffix(prefix, "."), n)
	}
}

// text returns a scalar as a keyval list would spell it; null is empty.
func (n *jsonNode) text() string {
	switch {
	case n.kind == 's':
		return n.str
	case string(n.raw) == "null":
		return ""
	}
	return string(n.raw)
}

// get implements optValue: scalars only; true and false read as written.
func (v jsonValue) get(key string) (string, bool) {
	if ns := v.index[key]; len(ns) > 0 {
		return ns[len(ns)-1].text(), true
	}
	return "", false
}

// set implements optValue: it sets string members only.
func (v jsonValue) set(key, val string) bool {
	found := false
	for _, n := range v.index[key] {
		if n.kind == 's' {
			n.str = val
			found = true
		}
	}
	return found
}

// each implements optValue.
func (v jsonValue) each(fn func(key, val string)) {
	v.root.walk("", func(path string, leaf *jsonNode) { fn(path, leaf.text()) })
}

// String implements optValue.
func (v jsonValue) String() string {
	var b bytes.Buffer
	v.root.write(&b)
	return b.String()
}

// write renders n compactly, without HTML escaping.
func (n *jsonNode) write(b *bytes.Buffer) {
	switch n.kind {
	case '{':
		b.WriteByte('{')
		for i, m := range n.members {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(b, m.key)
			b.WriteByte(':')
			m.val.write(b)
		}
		b.WriteByte('}')
	case '[':
		b.WriteByte('[')
		for i, e := range n.elems {
			if i > 0 {
				b.WriteByte(',')
			}
			e.write(b)
		}
		b.WriteByte(']')
	case 's':
		writeJSONString(b, n.str)
	default:
		b.Write(n.raw)
	}
}

// writeJSONString writes s as a JSON string.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // a string always encodes
	b.Truncate(b.Len() - 1) // Encode's newline
}

// plainValue is an option value that is not structured (-uuid, -hda,
// -pidfile); its one member has the empty key.
type plainValue struct{ v string }

var _ optValue = (*plainValue)(nil)

func (p *plainValue) get(key string) (string, bool) { return p.v, key == "" }

func (p *plainValue) set(key, val string) bool {
	if key != "" {
		return false
	}
	p.v = val
	return true
}

func (p *plainValue) each(fn func(key, val string)) { fn("", p.v) }

func (p *plainValue) String() string { return p.v }

// chardevSpec is the character-device shorthand of -serial, -qmp,
// -monitor, -parallel and -debugcon ("file:PATH", "unix:PATH,server=on",
// "chardev:ID", "stdio", ...). Its host path, if any, is the member
// "path".
type chardevSpec struct {
	prefix string   // "file:", "unix:", "pipe:", "chardev:", or "" for the rest
	inner  optValue // the part after the prefix
}

var _ optValue = (*chardevSpec)(nil)

// parseChardevSpec parses a shorthand. Of the forms with a host path,
// "file:" and "pipe:" take the rest as the path, and "unix:" a
// "path,options" list (qemu_chr_parse_compat).
func parseChardevSpec(s string) *chardevSpec {
	for _, p := range []string{"file:", "pipe:"} {
		if rest, ok := strings.CutPrefix(s, p); ok {
			return &chardevSpec{prefix: p, inner: &keyedPlain{key: "path", v: rest}}
		}
	}
	if rest, ok := strings.CutPrefix(s, "unix:"); ok {
		return &chardevSpec{prefix: "unix:", inner: parseKV(rest, "path")}
	}
	if rest, ok := strings.CutPrefix(s, "chardev:"); ok {
		return &chardevSpec{prefix: "chardev:", inner: &keyedPlain{key: "id", v: rest}}
	}
	return &chardevSpec{inner: &keyedPlain{key: "spec", v: s}}
}

func (c *chardevSpec) get(key string) (string, bool) { return c.inner.get(key) }

func (c *chardevSpec) set(key, val string) bool { return c.inner.set(key, val) }

func (c *chardevSpec) each(fn func(key, val string)) { c.inner.each(fn) }

func (c *chardevSpec) String() string { return c.prefix + c.inner.String() }

// keyedPlain is an unstructured value under one key.
type keyedPlain struct{ key, v string }

func (p *keyedPlain) get(key string) (string, bool) { return p.v, key == p.key }

func (p *keyedPlain) set(key, val string) bool {
	if key != p.key {
		return false
	}
	p.v = val
	return true
}

func (p *keyedPlain) each(fn func(key, val string)) { fn(p.key, p.v) }

func (p *keyedPlain) String() string { return p.v }

// isOn reports whether a boolean option value is true.
func isOn(v string) bool {
	switch strings.ToLower(v) {
	case "on", "true", "yes", "y":
		return true
	}
	return false
}

package agenttest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// handler runs one command with its checked arguments and returns the
// value of the reply's "return" member or an error reply.
type handler func(a *Agent, args map[string]json.RawMessage) (any, *ErrorReply)

// command describes one command the fake agent implements.
type command struct {
	// params lists the argument names the command takes; required
	// ones are marked with a trailing '!'.
	params []string
	run    handler
}

// commands are the commands the fake implements, by name. (Filled in by
// init: guest-info lists them.)
var commands map[string]command

func init() {
	commands = map[string]command{
		"guest-sync-delimited":       {[]string{"id!"}, runSync},
		"guest-sync":                 {[]string{"id!"}, runSync},
		"guest-ping":                 {nil, func(*Agent, map[string]json.RawMessage) (any, *ErrorReply) { return struct{}{}, nil }},
		"guest-info":                 {nil, (*Agent).runInfo},
		"guest-get-fsinfo":           {nil, (*Agent).runFSInfo},
		"guest-fsfreeze-status":      {nil, (*Agent).runStatus},
		"guest-fsfreeze-freeze":      {nil, (*Agent).runFreeze},
		"guest-fsfreeze-freeze-list": {[]string{"mountpoints"}, (*Agent).runFreeze},
		"guest-fsfreeze-thaw":        {nil, (*Agent).runThaw},
		"guest-exec":                 {[]string{"path!", "arg", "env", "input-data", "capture-output"}, (*Agent).runExec},
		"guest-exec-status":          {[]string{"pid!"}, (*Agent).runExecStatus},
	}
}

// frozenAllowed are the commands the real agent keeps enabled while
// frozen (qga/main.c, ga_freeze_allowlist).
var frozenAllowed = []string{
	"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
	"guest-fsfreeze-status", "guest-fsfreeze-thaw",
}

// run runs command c as the real agent's dispatcher does: unknown and
// disabled commands and bad arguments are refused with its classes and
// messages.
func (a *Agent) run(c Command) (any, *ErrorReply) {
	cmd, ok := commands[c.Name]
	if !ok {
		return nil, &ErrorReply{"CommandNotFound", fmt.Sprintf("The command %s has not been found", c.Name)}
	}
	a.mu.Lock()
	frozen := a.isFrozen
	a.mu.Unlock()
	if frozen && !slices.Contains(frozenAllowed, c.Name) {
		return nil, &ErrorReply{"CommandNotFound", fmt.Sprintf("Command %s has been disabled: the agent is in frozen state", c.Name)}
	}
	args := map[string]json.RawMessage{}
	if c.Args != nil {
		if err := json.Unmarshal(c.Args, &args); err != nil {
			return nil, &ErrorReply{"GenericError", "QMP input member 'arguments' must be an object"}
		}
	}
	for k := range args {
		if !slices.Contains(cmd.params, k) && !slices.Contains(cmd.params, k+"!") {
			return nil, &ErrorReply{"GenericError", fmt.Sprintf("Parameter '%s' is unexpected", k)}
		}
	}
	for _, p := range cmd.params {
		if name, required := strings.CutSuffix(p, "!"); required {
			if _, ok := args[name]; !ok {
				return nil, &ErrorReply{"GenericError", fmt.Sprintf("Parameter '%s' is missing", name)}
			}
		}
	}
	return cmd.run(a, args)
}

// arg decodes argument name into v, reporting a wrong type as the real
// agent does.
func arg(args map[string]json.RawMessage, name string, v any, want string) *ErrorReply {
	raw, ok := args[name]
	if !ok {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return &ErrorReply{"GenericError", fmt.Sprintf("Invalid parameter type for '%s', expected: %s", name, want)}
	}
	return nil
}

func runSync(_ *Agent, args map[string]json.RawMessage) (any, *ErrorReply) {
	var id json.Number
	if err := arg(args, "id", &id, "integer"); err != nil {
		return nil, err
	}
	if _, err := id.Int64(); err != nil {
		return nil, &ErrorReply{"GenericError", "Invalid parameter type for 'id', expected: integer"}
	}
	return id, nil
}

// commandInfo is one entry of guest-info's supported_commands.
type commandInfo struct {
	Enabled         bool   `json:"enabled"`
	Name            string `json:"name"`
	SuccessResponse bool   `json:"success-response"`
}

func (a *Agent) runInfo(map[string]json.RawMessage) (any, *ErrorReply) {
	a.mu.Lock()
	frozen := a.isFrozen
	a.mu.Unlock()
	var list []commandInfo
	for name := range commands {
		list = append(list, commandInfo{
			Enabled:         !frozen || slices.Contains(frozenAllowed, name),
			Name:            name,
			SuccessResponse: true,
		})
	}
	slices.SortFunc(list, func(x, y commandInfo) int { return strings.Compare(x.Name, y.Name) })
	return map[string]any{"version": a.Version, "supported_commands": list}, nil
}

func (a *Agent) runFSInfo(map[string]json.RawMessage) (any, *ErrorReply) {
	return a.FileSystems, nil
}

func (a *Agent) runStatus(map[string]json.RawMessage) (any, *ErrorReply) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.isFrozen {
		return "frozen", nil
	}
	return "thawed", nil
}

// runFreeze freezes the listed mount points (every file system without a
// list; mount points the guest lacks are ignored) and returns how many it
// froze. Like the real agent it leaves the frozen state at once when it
// froze none.
func (a *Agent) runFreeze(args map[string]json.RawMessage) (any, *ErrorReply) {
	var list []string
	if err := arg(args, "mountpoints", &list, "array of strings"); err != nil {
		return nil, err
	}
	_, hasList := args["mountpoints"]
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, fs := range a.FileSystems {
		if hasList && !slices.Contains(list, fs.Mountpoint) {
			continue
		}
		a.frozen[fs.Mountpoint] = true
		n++
	}
	a.isFrozen = n > 0
	return n, nil
}

func (a *Agent) runThaw(map[string]json.RawMessage) (any, *ErrorReply) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.frozen)
	clear(a.frozen)
	a.isFrozen = false
	return n, nil
}

func (a *Agent) runExec(args map[string]json.RawMessage) (any, *ErrorReply) {
	var (
		path, input string
		argv, env   []string
		capture     bool
	)
	for _, e := range []*ErrorReply{
		arg(args, "path", &path, "string"),
		arg(args, "arg", &argv, "array of strings"),
		arg(args, "env", &env, "array of strings"),
		arg(args, "input-data", &input, "string"),
		arg(args, "capture-output", &capture, "boolean"),
	} {
		if e != nil {
			return nil, e
		}
	}
	data, err := base64.StdEncoding.DecodeString(input)
	if err != nil {
		return nil, &ErrorReply{"GenericError", "Invalid parameter 'input-data'"}
	}
	res := ExecResult{}
	if a.Exec != nil {
		res = a.Exec(path, argv, data)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	pid := a.nextPID
	a.nextPID++
	a.procs[pid] = &proc{res: res, capture: capture}
	return map[string]int{"pid": pid}, nil
}

// runExecStatus reports a program's state; like the real agent it forgets
// a program once it has reported it exited.
func (a *Agent) runExecStatus(args map[string]json.RawMessage) (any, *ErrorReply) {
	var pid int
	if err := arg(args, "pid", &pid, "integer"); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.procs[pid]
	if !ok {
		return nil, &ErrorReply{"GenericError", "Invalid parameter 'pid'"}
	}
	if p.polls < p.res.Polls {
		p.polls++
		return map[string]any{"exited": false}, nil
	}
	delete(a.procs, pid)
	st := map[string]any{"exited": true}
	if p.res.Signal != 0 {
		st["signal"] = p.res.Signal
	} else {
		st["exitcode"] = p.res.ExitCode
	}
	if p.capture {
		if len(p.res.Stdout) > 0 {
			st["out-data"] = base64.StdEncoding.EncodeToString(p.res.Stdout)
		}
		if len(p.res.Stderr) > 0 {
			st["err-data"] = base64.StdEncoding.EncodeToString(p.res.Stderr)
		}
	}
	return st, nil
}

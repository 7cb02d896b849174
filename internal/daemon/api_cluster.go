package daemon

import (
	"context"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/pki"
	"github.com/twinsnap/twinsnap/internal/api"
)

// healthTimeout bounds one peer's health query in a cluster status.
const healthTimeout = 2 * time.Second

func (d *Daemon) nodeStatus() api.NodeStatus {
	s := d.node.Status()
	ns := api.NodeStatus{
		ID: s.ID, Role: s.Role, RaftState: s.RaftState, Term: s.Term,
		LastIndex: s.LastIndex, CommitIndex: s.CommitIndex, AppliedIndex: s.AppliedIndex,
		LeaderID: s.LeaderID, Version: Version,
	}
	if !s.LastContact.IsZero() {
		lc := s.LastContact.UTC()
		ns.LastContact = &lc
	}
	return ns
}

func (d *Daemon) getHealth(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, http.StatusOK, d.nodeStatus())
	return nil
}

func (d *Daemon) getNodes(w http.ResponseWriter, _ *http.Request) error {
	servers, err := d.node.Servers()
	if err != nil {
		return err
	}
	voters := map[string]string{}
	for _, s := range servers {
		voters[s.ID] = s.Address
	}
	leader, _ := d.node.Leader()
	out := api.NodeList{Nodes: []api.Node{}}
	seen := map[string]bool{}
	for _, n := range d.st.Nodes() {
		_, voter := voters[n.ID]
		out.Nodes = append(out.Nodes, api.Node{Node: n.Node, Voter: voter, Leader: n.ID == leader})
		seen[n.ID] = true
	}
	// Voters not yet registered in the state (just joined, or never
	// started) are shown with what Raft knows.
	for id, addr := range voters {
		if !seen[id] {
			out.Nodes = append(out.Nodes, api.Node{Node: command.Node{ID: id, RaftAddress: addr}, Voter: true, Leader: id == leader})
		}
	}
	sort.Slice(out.Nodes, func(i, j int) bool { return out.Nodes[i].ID < out.Nodes[j].ID })
	writeJSON(w, http.StatusOK, out)
	return nil
}

// postNode admits a new node: a node certificate holder asks to be added
// as a voter under the id its certificate names.
func (d *Daemon) postNode(w http.ResponseWriter, r *http.Request) error {
	var req api.JoinRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if c := callerOf(r); c.role != pki.RoleNode || c.name != req.ID {
		return apiError(api.CodeUnauthorized, "a node may only join under the id its certificate names")
	}
	if err := req.Validate(); err != nil {
		return apiError(api.CodeInvalid, err.Error())
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	if err := d.node.AddVoter(ctx, req.ID, req.RaftAddress); err != nil {
		return err
	}
	cmd := command.Command(&command.NodeAdded{Node: req.Node})
	if cur, err := d.st.Node(req.ID); err == nil && cur.Node != req.Node {
		cmd = &command.NodeUpdated{Node: req.Node}
	} else if err == nil {
		writeJSON(w, http.StatusOK, api.Node{Node: req.Node, Voter: true})
		return nil
	}
	if _, err := d.propose(ctx, cmd); err != nil {
		return err
	}
	d.log.Info("admitted a node", "id", req.ID, "role", req.Role)
	writeJSON(w, http.StatusOK, api.Node{Node: req.Node, Voter: true})
	return nil
}

// deleteNode removes a node from the state (refused while it hosts VMs or
// runs jobs) and then from the Raft configuration.
func (d *Daemon) deleteNode(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	if _, err := d.st.Node(id); err == nil {
		res, err := d.propose(ctx, &command.NodeRemoved{ID: id})
		if err != nil {
			return err
		}
		// Read-your-writes: a node list through this node right after
		// must not show the removed node.
		if err := d.waitApplied(ctx, res.Index); err != nil {
			return err
		}
	}
	servers, err := d.node.Servers()
	if err != nil {
		return err
	}
	inConfig := false
	for _, s := range servers {
		inConfig = inConfig || s.ID == id
	}
	if !inConfig {
		if _, err := d.st.Node(id); err != nil {
			return apiError(api.CodeNotFound, "no node "+id)
		}
	} else if err := d.node.RemoveServer(ctx, id); err != nil {
		return err
	}
	d.log.Info("removed a node", "id", id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// getClusterStatus asks every member for its own status, in parallel and
// bounded, and combines the answers with this node's view.
func (d *Daemon) getClusterStatus(w http.ResponseWriter, r *http.Request) error {
	self := d.nodeStatus()
	servers, err := d.node.Servers()
	if err != nil {
		return err
	}
	nodes := map[string]command.Node{}
	for _, n := range d.st.Nodes() {
		nodes[n.ID] = n.Node
	}
	voters := map[string]bool{}
	ids := []string{}
	for _, s := range servers {
		voters[s.ID] = true
		if _, ok := nodes[s.ID]; !ok {
			nodes[s.ID] = command.Node{ID: s.ID, RaftAddress: s.Address}
		}
	}
	for id := range nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	failed := d.node.Status().FailedPeers

	peers := make([]api.PeerStatus, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		n := nodes[id]
		peers[i] = api.PeerStatus{ID: id, Role: n.Role, RaftAddress: n.RaftAddress, APIAddress: n.APIAddress, Voter: voters[id]}
		if id == d.cfg.ID {
			st := self
			peers[i].Status, peers[i].Reachable = &st, true
			continue
		}
		if n.APIAddress == "" {
			peers[i].Error = "API address unknown (node not registered yet)"
			continue
		}
		wg.Add(1)
		go func(p *api.PeerStatus) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
			defer cancel()
			c := api.NewClientTLS([]string{p.APIAddress}, d.peerTLS)
			defer c.Close()
			start := time.Now()
			st, err := c.Health(ctx)
			if err != nil {
				p.Error = err.Error()
				return
			}
			p.RTTMillis = float64(time.Since(start).Microseconds()) / 1000
			p.Status, p.Reachable = st, true
		}(&peers[i])
	}
	wg.Wait()
	for i := range peers {
		p := &peers[i]
		_, heartbeatFailing := failed[p.ID]
		p.Healthy = p.Reachable && p.Voter && !heartbeatFailing && p.Status != nil &&
			(p.Status.RaftState == "Leader" || p.Status.RaftState == "Follower") &&
			p.Status.LeaderID != "" && p.Status.LeaderID == self.LeaderID
		if heartbeatFailing && p.Error == "" {
			p.Error = "leader's heartbeats to it are failing"
		}
	}
	writeJSON(w, http.StatusOK, api.ClusterStatus{
		AnsweredBy:  d.cfg.ID,
		LeaderID:    self.LeaderID,
		Term:        self.Term,
		LastIndex:   self.LastIndex,
		CommitIndex: self.CommitIndex,
		Peers:       peers,
	})
	return nil
}

func (d *Daemon) settings() api.Settings {
	s := d.st.Settings()
	return api.Settings{SnapshotsEnabled: s.SnapshotsEnabled, Values: s.Values}
}

func (d *Daemon) getSettings(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, http.StatusOK, d.settings())
	return nil
}

func (d *Daemon) putSnapshotsSetting(w http.ResponseWriter, r *http.Request) error {
	var req api.SnapshotsSetting
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if err := d.setSettings(r, &command.SettingsSet{SnapshotsEnabled: &req.Enabled}); err != nil {
		return err
	}
	d.log.Info("snapshots setting changed", "enabled", req.Enabled, "by", callerOf(r).name)
	writeJSON(w, http.StatusOK, d.settings())
	return nil
}

func (d *Daemon) putSettingValues(w http.ResponseWriter, r *http.Request) error {
	var req api.SettingValues
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if err := d.setSettings(r, &command.SettingsSet{Values: req.Values}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d.settings())
	return nil
}

// setSettings commits a settings change and waits until this node applied
// it, so that the reply shows it.
func (d *Daemon) setSettings(r *http.Request, cmd *command.SettingsSet) error {
	if err := cmd.Validate(); err != nil {
		return apiError(api.CodeInvalid, err.Error())
	}
	res, err := d.propose(r.Context(), cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	return d.waitApplied(ctx, res.Index)
}

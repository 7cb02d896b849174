package hypervisor

import (
	"encoding/json"
	"sync"
	"sync/atomic"
)

// EventsLost is the name of the event a subscription delivers in place of
// the events it had to drop because its queue was full (see
// DefaultEventQueueLimit). Its data is {"dropped": N}. It is delivered
// whatever the subscription's match function says, at the position of the
// gap: the events before it and after it are in QEMU's order, and N events
// are missing between them. A consumer that depends on every event (a job
// watcher) must re-read the state it follows when it sees one.
const EventsLost = "TWINSNAP_EVENTS_LOST"

// DefaultEventQueueLimit is how many events one subscription holds for a
// consumer that is not reading, before it drops new ones and marks the gap
// with an EventsLost event. The connection's reader never waits for a
// subscriber.
const DefaultEventQueueLimit = 4096

// EventsLostData is the data of an EventsLost event.
type EventsLostData struct {
	Dropped uint64 `json:"dropped"`
}

// queued is one entry of a subscription's queue: an event, or a gap
// marker counting the events dropped at that position.
type queued struct {
	ev  Event
	gap *uint64 // non-nil for a gap marker; grows until the marker is taken
}

// subscription delivers matching events to one consumer. The reader
// appends to queue (never blocking); pump moves the queue into out.
type subscription struct {
	match func(Event) bool
	limit int
	out   chan Event
	wake  chan struct{} // capacity 1: "the queue or closed changed"
	stop  chan struct{} // closed by cancel: deliver nothing more
	done  chan struct{} // closed when pump has exited (and closed out)
	// onGap is called (from the reader, outside mu) when a gap opens.
	onGap func()
	// dropped counts the connection's dropped events.
	dropped *atomic.Uint64

	mu      sync.Mutex
	queue   []queued
	openGap *uint64 // the gap marker at the queue's tail, if any
	closed  bool    // no more events will be added

	stopOnce sync.Once
}

func newSubscription(match func(Event) bool, limit int, onGap func(), dropped *atomic.Uint64) *subscription {
	s := &subscription{
		match:   match,
		limit:   limit,
		out:     make(chan Event),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		onGap:   onGap,
		dropped: dropped,
	}
	go s.pump()
	return s
}

// offer queues ev if it matches. It never blocks: past the limit the
// event is dropped and counted in a gap marker. It runs on the reader.
func (s *subscription) offer(ev Event) {
	if s.match != nil && !s.match(ev) {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	newGap := false
	switch {
	case len(s.queue) < s.limit:
		s.queue = append(s.queue, queued{ev: ev})
		s.openGap = nil // later drops start a new gap after this event
	case s.openGap != nil:
		*s.openGap++
		s.dropped.Add(1)
	default:
		// The marker may take the queue one past its limit.
		n := uint64(1)
		s.openGap = &n
		s.queue = append(s.queue, queued{gap: s.openGap})
		s.dropped.Add(1)
		newGap = true
	}
	s.mu.Unlock()
	s.notify()
	if newGap && s.onGap != nil {
		s.onGap()
	}
}

// close ends the input: events already queued are still delivered, then
// the channel is closed.
func (s *subscription) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.notify()
}

// cancel stops delivery at once, closes the channel and waits for the
// pump to exit. It is idempotent.
func (s *subscription) cancel() {
	s.close()
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
}

func (s *subscription) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pump delivers the queue in order until the input is closed and the
// queue is empty, or until cancel.
func (s *subscription) pump() {
	defer close(s.done)
	defer close(s.out)
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return
			}
			select {
			case <-s.wake:
				continue
			case <-s.stop:
				return
			}
		}
		q := s.queue[0]
		s.queue[0] = queued{}
		s.queue = s.queue[1:]
		ev := q.ev
		if q.gap != nil {
			if s.openGap == q.gap {
				s.openGap = nil
			}
			ev = lostEvent(*q.gap)
		}
		s.mu.Unlock()
		select {
		case s.out <- ev:
		case <-s.stop:
			return
		}
	}
}

// lostEvent builds the EventsLost marker for n dropped events.
func lostEvent(n uint64) Event {
	data, _ := json.Marshal(EventsLostData{Dropped: n})
	return Event{Name: EventsLost, Data: data}
}

// subscriptions is the set of a connection's subscribers.
type subscriptions struct {
	mu     sync.Mutex
	set    map[*subscription]struct{}
	closed bool
}

// add registers s, or closes it at once when the set is closed.
func (ss *subscriptions) add(s *subscription) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		s.close()
		return
	}
	if ss.set == nil {
		ss.set = map[*subscription]struct{}{}
	}
	ss.set[s] = struct{}{}
}

func (ss *subscriptions) remove(s *subscription) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.set, s)
}

// dispatch offers ev to every subscriber.
func (ss *subscriptions) dispatch(ev Event) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return
	}
	for s := range ss.set {
		s.offer(ev)
	}
}

// closeAll closes every subscriber's input (queued events are still
// delivered) and refuses new subscribers. With cancel it also stops
// delivery and forgets the subscribers, returning once every pump has
// exited; without it the subscribers stay in the set, so that a later
// closeAll(true) (Close) still stops the pumps of consumers that neither
// drained nor cancelled.
func (ss *subscriptions) closeAll(cancel bool) {
	ss.mu.Lock()
	ss.closed = true
	list := make([]*subscription, 0, len(ss.set))
	for s := range ss.set {
		list = append(list, s)
	}
	if cancel {
		ss.set = nil
	}
	ss.mu.Unlock()
	for _, s := range list {
		if cancel {
			s.cancel()
		} else {
			s.close()
		}
	}
}

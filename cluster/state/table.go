package state

import (
	"maps"
	"slices"
)

// table is a copy-on-write map from key to immutable record, split into
// shards so that a checkpoint costs one small slice copy and the first write
// after it copies only the shard it touches.
//
// Records reachable from a table are never modified: a change clones the
// record, edits the clone and puts it. Each shard remembers the generation
// it was written in; freeze starts a new generation, after which a write to
// an older shard copies it first. The frozen copy therefore keeps seeing
// the shards as they were.
type table[T any] struct {
	gen    uint64
	shards []*shard[T]
	n      int
}

type shard[T any] struct {
	gen uint64
	m   map[string]*T
}

func newTable[T any](shards int) *table[T] {
	return &table[T]{shards: make([]*shard[T], shards)}
}

// shardOf hashes k with FNV-1a; the hash only spreads keys, it never
// decides an order anything depends on.
func (t *table[T]) shardOf(k string) int {
	h := uint32(2166136261)
	for i := 0; i < len(k); i++ {
		h ^= uint32(k[i])
		h *= 16777619
	}
	return int(h % uint32(len(t.shards)))
}

func (t *table[T]) get(k string) *T {
	s := t.shards[t.shardOf(k)]
	if s == nil {
		return nil
	}
	return s.m[k]
}

func (t *table[T]) writable(i int) *shard[T] {
	s := t.shards[i]
	switch {
	case s == nil:
		s = &shard[T]{gen: t.gen, m: map[string]*T{}}
		t.shards[i] = s
	case s.gen != t.gen:
		s = &shard[T]{gen: t.gen, m: maps.Clone(s.m)}
		t.shards[i] = s
	}
	return s
}

// put stores v under k; v must not be modified afterwards.
func (t *table[T]) put(k string, v *T) {
	s := t.writable(t.shardOf(k))
	if _, ok := s.m[k]; !ok {
		t.n++
	}
	s.m[k] = v
}

func (t *table[T]) del(k string) {
	i := t.shardOf(k)
	if s := t.shards[i]; s == nil || s.m[k] == nil {
		return
	}
	delete(t.writable(i).m, k)
	t.n--
}

// freeze returns a read-only copy of t as it is now and starts a new
// generation in t. Never write to the copy.
func (t *table[T]) freeze() *table[T] {
	c := &table[T]{gen: t.gen, shards: slices.Clone(t.shards), n: t.n}
	t.gen++
	return c
}

// keys returns every key, sorted: the only order anything observable uses.
func (t *table[T]) keys() []string {
	out := make([]string, 0, t.n)
	for _, s := range t.shards {
		if s != nil {
			for k := range s.m {
				out = append(out, k)
			}
		}
	}
	slices.Sort(out)
	return out
}

// sorted returns every record in key order.
func (t *table[T]) sorted() []*T {
	keys := t.keys()
	out := make([]*T, len(keys))
	for i, k := range keys {
		out[i] = t.get(k)
	}
	return out
}

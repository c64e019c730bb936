package redisstore

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemdb/idem"
)

var _ idem.Watcher = (*Backend)(nil)

// subscribeWait bounds how long Watch waits for Redis to confirm a new
// subscription; past it Watch returns anyway, and a change made before
// the subscription took effect is seen at the next poll.
const subscribeWait = 2 * time.Second

// watchState says whether keyspace notifications can be used.
type watchState int

const (
	watchUnknown  watchState = iota // not checked yet, or the check failed to reach Redis
	watchOn                         // notify-keyspace-events has what Watch needs
	watchOff                        // refused: a Cluster, a Ring, or CONFIG refused
	watchDisabled                   // the backend is closed
)

// watched is one key's subscription and its watchers.
type watched struct {
	n       int           // watchers
	changed chan struct{} // closed, and replaced, when a notification comes
	ready   chan struct{} // closed when Redis confirms the subscription
}

// watch is a Backend's keyspace-notification state: one pub/sub
// connection, subscribed to the channel of each key somebody watches.
type watch struct {
	mu     sync.Mutex
	state  watchState
	ps     *redis.PubSub
	keys   map[string]*watched // by channel name
	prefix string              // "__keyspace@<db>__:" + the key prefix
	done   chan struct{}       // closed when the receiving goroutine ends
}

// Watch implements idem.Watcher with Redis keyspace notifications, so
// that a Wait on this instance wakes when another instance writes or
// deletes the key (or Redis expires it). Writes cost nothing more: Redis
// publishes the notification itself.
//
// On first use Watch reads notify-keyspace-events with CONFIG GET. When it
// lacks what Watch needs (K with $, g and x, or K with A), Watch adds that
// with CONFIG SET if Config.SetKeyspaceEvents allows it, and otherwise
// reports ok == false from then on, so that Wait polls only. When Redis
// refuses CONFIG (many managed services do), Watch reports ok == false
// too; enable the notifications in the server's own configuration then.
// The backend keeps one pub/sub connection, subscribed to the keyspace
// channel of each key that somebody watches. Watch needs a *redis.Client
// (standalone or Sentinel failover); on a Cluster or a Ring it reports ok
// == false, since keyspace notifications are published only on the node
// that holds the key. CONFIG SET is not replicated: after a Sentinel
// failover, the new master publishes notifications only if its own
// configuration enables them.
func (b *Backend) Watch(ctx context.Context, key string) (<-chan struct{}, func(), bool) {
	w := &b.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state == watchUnknown {
		w.state = b.enableNotifications(ctx)
	}
	if w.state != watchOn {
		return nil, nil, false
	}
	ch := w.prefix + key
	e := w.keys[ch]
	if e == nil {
		if w.ps == nil {
			w.ps = b.rdb.Subscribe(ctx)
		}
		if err := w.ps.Subscribe(ctx, ch); err != nil {
			_ = w.ps.Unsubscribe(ctx, ch)
			return nil, nil, false
		}
		e = &watched{changed: make(chan struct{}), ready: make(chan struct{})}
		if w.keys == nil {
			w.keys = map[string]*watched{}
			w.done = make(chan struct{})
			go w.receive(w.ps.ChannelWithSubscriptions(), w.done)
		}
		w.keys[ch] = e
	}
	e.n++
	changed := e.changed
	var once sync.Once
	stop := func() { once.Do(func() { w.unwatch(ch, e) }) }
	select {
	case <-e.ready:
		return changed, stop, true
	default:
	}
	// Wait, without the lock, until the subscription is in place, so that
	// a write after Watch returns is not missed.
	w.mu.Unlock()
	t := time.NewTimer(subscribeWait)
	select {
	case <-e.ready:
	case <-ctx.Done():
	case <-t.C:
	}
	t.Stop()
	w.mu.Lock()
	return changed, stop, true
}

// unwatch stops one watcher of channel ch, and unsubscribes when it was
// the last.
func (w *watch) unwatch(ch string, e *watched) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e.n--; e.n > 0 || w.keys[ch] != e {
		return
	}
	delete(w.keys, ch)
	if w.state == watchOn {
		// go-redis forgets the channel even when the write fails, so a
		// reconnect does not subscribe to it again.
		_ = w.ps.Unsubscribe(context.Background(), ch)
	}
}

// receive fans the pub/sub connection's messages out to the watchers, until
// the connection is closed.
func (w *watch) receive(msgs <-chan any, done chan struct{}) {
	defer close(done)
	for m := range msgs {
		var ch string
		notified := false
		switch m := m.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			ch = m.Channel
		case *redis.Message:
			ch, notified = m.Channel, true
		default:
			continue
		}
		w.mu.Lock()
		if e := w.keys[ch]; e != nil {
			select {
			case <-e.ready:
			default:
				close(e.ready)
			}
			if notified {
				close(e.changed)
				e.changed = make(chan struct{})
			}
		}
		w.mu.Unlock()
	}
}

// enableNotifications checks, and if need be sets, notify-keyspace-events
// so that writes, deletions and expiries of string keys are published on
// the key's keyspace channel. It sets w.prefix.
func (b *Backend) enableNotifications(ctx context.Context) watchState {
	c, ok := b.rdb.(*redis.Client)
	if !ok {
		return watchOff
	}
	b.watch.prefix = "__keyspace@" + strconv.Itoa(c.Options().DB) + "__:" + b.prefix
	cur, err := c.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		return refused(err)
	}
	flags := cur["notify-keyspace-events"]
	want := notifyFlags(flags)
	if want == flags {
		return watchOn
	}
	if !b.setEvents {
		return watchOff
	}
	if err := c.ConfigSet(ctx, "notify-keyspace-events", want).Err(); err != nil {
		return refused(err)
	}
	return watchOn
}

// refused is the state after CONFIG failed with err: off for good when
// Redis answered with an error, unknown (ask again later) when it could
// not be reached.
func refused(err error) watchState {
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return watchOff
	}
	return watchUnknown
}

// notifyFlags returns flags (a notify-keyspace-events value) with what
// Watch needs added: K (keyspace channels) and either A or all of $
// (string commands: SET), g (generic: DEL) and x (expiries).
func notifyFlags(flags string) string {
	need := "K"
	if !strings.Contains(flags, "A") {
		need += "$gx"
	}
	for _, f := range need {
		if !strings.ContainsRune(flags, f) {
			flags += string(f)
		}
	}
	return flags
}

// closeWatch closes the pub/sub connection and waits for its goroutine.
func (b *Backend) closeWatch() error {
	w := &b.watch
	w.mu.Lock()
	w.state = watchDisabled
	ps, done := w.ps, w.done
	w.ps, w.keys = nil, nil
	w.mu.Unlock()
	if ps == nil {
		return nil
	}
	err := ps.Close()
	if done != nil {
		<-done
	}
	return err
}

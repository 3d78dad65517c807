//! The start gate: a few CPU-heavy start steps (a sandbox's namespaces and network, a
//! container's root filesystem, its shim and `runc run`) at a time, two per core, oldest
//! pod first.
//!
//! Starting a pod is CPU-bound work in short-lived processes. When twenty pods arrive at
//! once and every step runs at once, the cores are shared twenty ways and every pod is
//! ready only when all are. Admitting steps by the age of their pod (the sandbox's
//! creation time) instead lets the first pods finish first, with the same total work. Two
//! per core, not one: the steps also wait (on the kernel's namespace and mount work, on
//! child processes), and one per core measured slower overall.
//!
//! A step that the same pod surely follows with another (a sandbox with its first
//! container, a created container with its start) keeps its permit for that pod a short
//! while ([`Pass::reserve`]): the kubelet needs a few milliseconds between the calls, and
//! a younger pod's sandbox taking the permit in that gap would delay the older pod by a
//! whole step.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a permit waits for the next step of its pod: the kubelet's gap between
/// the calls, with room for a busy machine.
pub const NEXT_STEP_HOLD: Duration = Duration::from_millis(100);

/// A counting gate whose waiters enter in key order (smallest first, then arrival).
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Debug)]
struct State {
    free: usize,
    next: u64,
    waiting: BinaryHeap<Reverse<(i64, u64)>>,
    /// Permits kept for a key's next step, until the deadline.
    reserved: Vec<(i64, Instant)>,
}

impl State {
    /// Frees the reservations whose time is up; the earliest deadline still pending.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        let before = self.reserved.len();
        self.reserved.retain(|(_, until)| *until > now);
        self.free += before - self.reserved.len();
        self.reserved.iter().map(|(_, until)| *until).min()
    }
}

/// Held while a step runs; dropping it lets the next waiter in.
#[must_use]
pub struct Pass<'a>(&'a Gate);

impl Gate {
    /// A gate letting `permits` steps run at once (at least one).
    pub fn new(permits: usize) -> Gate {
        Gate {
            state: Mutex::new(State {
                free: permits.max(1),
                next: 0,
                waiting: BinaryHeap::new(),
                reserved: Vec::new(),
            }),
            freed: Condvar::new(),
        }
    }

    /// Two permits per core.
    pub fn per_core() -> Gate {
        Gate::new(2 * std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Blocks until a permit is free and no waiter with a smaller key (an older pod)
    /// is ahead, or until the permit reserved for `key` is there.
    pub fn enter(&self, key: i64) -> Pass<'_> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = Reverse((key, s.next));
        s.next += 1;
        s.waiting.push(ticket);
        loop {
            let now = Instant::now();
            let free = s.free;
            let deadline = s.expire(now);
            if s.free > free {
                // Expired reservations: the head of the queue may now go.
                self.freed.notify_all();
            }
            if let Some(i) = s.reserved.iter().position(|(k, _)| *k == key) {
                s.reserved.swap_remove(i);
                s.waiting.retain(|t| *t != ticket);
                // It may have been the head of the queue.
                self.freed.notify_all();
                return Pass(self);
            }
            if s.free > 0 && s.waiting.peek() == Some(&ticket) {
                s.waiting.pop();
                s.free -= 1;
                // Another permit may be free for the next in line.
                self.freed.notify_all();
                return Pass(self);
            }
            s = match deadline {
                Some(d) => {
                    let wait = d.saturating_duration_since(now);
                    self.freed
                        .wait_timeout(s, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.freed.wait(s).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

impl Pass<'_> {
    /// Keeps the permit for the next step of `key` for at most `hold`; after that, or
    /// when that step has entered, it serves the others again.
    pub fn reserve(self, key: i64, hold: Duration) {
        let gate = self.0;
        std::mem::forget(self);
        let mut s = gate.state.lock().unwrap_or_else(|p| p.into_inner());
        s.reserved.push((key, Instant::now() + hold));
        // Waiters must learn the new deadline (and the reserved key may be waiting).
        gate.freed.notify_all();
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        s.free += 1;
        self.0.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn older_keys_enter_first_and_permits_bound_concurrency() {
        let gate = Arc::new(Gate::new(1));
        let held = gate.enter(100);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        // Queued youngest first: they must still enter oldest first.
        for key in [30, 20, 10] {
            let (g, o) = (gate.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _p = g.enter(key);
                o.lock().unwrap().push(key);
            }));
            // Each waiter is queued before the next one arrives.
            while gate.state.lock().unwrap().waiting.len() < threads.len() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "the held permit blocks all"
        );
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![10, 20, 30]);
        assert_eq!(gate.state.lock().unwrap().free, 1);
    }

    #[test]
    fn two_permits_admit_two() {
        let gate = Gate::new(2);
        let a = gate.enter(1);
        let b = gate.enter(2);
        assert_eq!(gate.state.lock().unwrap().free, 0);
        drop(a);
        let _c = gate.enter(3);
        drop(b);
        assert_eq!(gate.state.lock().unwrap().free, 1);
    }

    #[test]
    fn a_reserved_permit_waits_for_its_key_then_expires() {
        let gate = Arc::new(Gate::new(1));
        gate.enter(5).reserve(5, Duration::from_secs(60));
        // Key 5 takes its reservation; an older key must wait for it.
        let again = gate.enter(5);
        drop(again);
        assert_eq!(gate.state.lock().unwrap().free, 1);

        gate.enter(5).reserve(5, Duration::from_millis(50));
        let t = std::time::Instant::now();
        let other = gate.enter(1);
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "the reserved permit was taken by another key"
        );
        drop(other);
        let s = gate.state.lock().unwrap();
        assert_eq!((s.free, s.reserved.len()), (1, 0));
    }

    #[test]
    fn pods_with_reservations_never_lose_a_permit() {
        // Many pods at once, each a sandbox, a create and a start as the runtime runs
        // them; some never come back for their reservation (a failed step).
        let gate = Arc::new(Gate::new(2));
        let threads: Vec<_> = (0..16i64)
            .map(|key| {
                let g = gate.clone();
                std::thread::spawn(move || {
                    g.enter(key).reserve(key, Duration::from_millis(20));
                    if key % 4 == 0 {
                        return;
                    }
                    g.enter(key).reserve(key, Duration::from_millis(20));
                    drop(g.enter(key));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The abandoned reservations expire on the next entry.
        std::thread::sleep(Duration::from_millis(30));
        drop(gate.enter(100));
        let s = gate.state.lock().unwrap();
        assert_eq!((s.free, s.reserved.len(), s.waiting.len()), (2, 0, 0));
    }
}

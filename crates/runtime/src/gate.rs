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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex};

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
            }),
            freed: Condvar::new(),
        }
    }

    /// Two permits per core.
    pub fn per_core() -> Gate {
        Gate::new(2 * std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Blocks until a permit is free and no waiter with a smaller key (an older pod)
    /// is ahead.
    pub fn enter(&self, key: i64) -> Pass<'_> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = Reverse((key, s.next));
        s.next += 1;
        s.waiting.push(ticket);
        loop {
            if s.free > 0 && s.waiting.peek() == Some(&ticket) {
                s.waiting.pop();
                s.free -= 1;
                // Another permit may be free for the next in line.
                self.freed.notify_all();
                return Pass(self);
            }
            s = self.freed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
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
}

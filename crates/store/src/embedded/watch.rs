//! Watches on the embedded store. A watcher is a cursor into the in-memory history, not a
//! buffer: a slow one simply reads further behind and catches up, and only a cursor that
//! falls behind the compaction point ends, with `Compacted`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::stream;

use super::Shared;
use crate::{KeySpan, Result, Revision, StoreError, WatchResponse, WatchStream};

/// Events per message, so a far-behind watcher catches up in bounded steps.
const MAX_EVENTS: usize = 1000;

struct Cursor {
    shared: Arc<Shared>,
    rx: tokio::sync::watch::Receiver<Revision>,
    span: KeySpan,
    after: Revision,
    last_sent: Instant,
    done: bool,
}

pub(crate) fn start(shared: Arc<Shared>, span: KeySpan, after: Revision) -> Result<WatchStream> {
    let rx = shared.visible.subscribe();
    let after = {
        let st = shared.read_state();
        if after < 0 {
            return Err(StoreError::Invalid(format!("negative revision {after}")));
        }
        if after != 0 && after < st.compacted {
            return Err(StoreError::Compacted {
                requested: after + 1,
                compacted: st.compacted,
            });
        }
        if after == 0 {
            st.visible
        } else {
            after
        }
    };
    let cursor = Cursor {
        shared,
        rx,
        span,
        after,
        last_sent: Instant::now(),
        done: false,
    };
    Ok(Box::pin(stream::unfold(cursor, next)))
}

async fn next(mut c: Cursor) -> Option<(Result<WatchResponse>, Cursor)> {
    if c.done {
        return None;
    }
    loop {
        let visible = *c.rx.borrow_and_update();
        if c.after < visible {
            let found = c
                .shared
                .read_state()
                .events(&c.span, c.after, visible, MAX_EVENTS);
            match found {
                Err(e) => {
                    c.done = true;
                    return Some((Err(e), c));
                }
                Ok((events, reached)) => {
                    c.after = reached;
                    if !events.is_empty() {
                        c.last_sent = Instant::now();
                        return Some((Ok(WatchResponse::Events(events)), c));
                    }
                    continue;
                }
            }
        }
        if c.shared.closed.load(Ordering::SeqCst) {
            return None;
        }
        let interval = c.shared.options.progress_interval;
        let wait = interval.saturating_sub(c.last_sent.elapsed());
        match tokio::time::timeout(wait, c.rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return None,
            Err(_) => {
                c.last_sent = Instant::now();
                let rev = c.after;
                return Some((Ok(WatchResponse::Progress(rev)), c));
            }
        }
    }
}

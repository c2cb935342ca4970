//! Runs the controllers while this replica leads, each term on a store fenced by the term's
//! epoch; stops them when leadership is lost, and at shutdown.
//!
//! ```text
//!   leader::Status ──► term T? ── yes ──► spawn controllers on FencedStore(T) ─┐
//!        ▲                  └── no, but a leader is known ──► ready (serve as a follower)
//!        └──────── status changes: stop the term's controllers, look again ◄───┘
//! ```

use std::sync::Arc;

use tokio::sync::watch;

use crate::{Context, ControlError, audit, controllers, leader};

type Running = (
    leader::Term,
    watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
);

async fn stop(running: Running) {
    let (_, tx, handles) = running;
    let _ = tx.send(true);
    for h in handles {
        h.abort();
        let _ = h.await;
    }
}

/// Follows `status` until shutdown, running the controllers during this replica's terms.
pub async fn supervise(
    ctx: Context,
    mut status: watch::Receiver<leader::Status>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: Option<Running> = None;
    loop {
        let current = status.borrow_and_update().clone();
        let same = running
            .as_ref()
            .is_some_and(|(t, ..)| Some(t) == current.term.as_ref());
        if !same {
            if let Some(r) = running.take() {
                stop(r).await;
            }
            if let Some(term) = current.term.clone() {
                let fenced = if term.epoch > 0 {
                    ctx.with_store(Arc::new(leader::FencedStore::new(ctx.store.clone(), &term)))
                } else {
                    ctx.clone()
                };
                let (tx, rx) = watch::channel(false);
                match spawn_controllers(fenced, rx) {
                    Ok(handles) => running = Some((term, tx, handles)),
                    Err(e) => tracing::error!(error = %e, "cannot start the controllers"),
                }
            } else if current.holder.is_some() {
                // A follower serves the API as soon as it knows who leads.
                ctx.ready.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    // No election (the embedded store), or it ended: act until shutdown.
                    let _ = shutdown.changed().await;
                    break;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Some(r) = running.take() {
        stop(r).await;
    }
}

fn spawn_controllers(
    ctx: Context,
    stop: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ControlError> {
    Ok(vec![
        controllers::scheduler::spawn(ctx.clone(), stop.clone())?,
        controllers::expiry::spawn(ctx.clone(), stop.clone()),
        controllers::claims::spawn(ctx.clone(), stop.clone()),
        audit::checkpoint::spawn(ctx.clone(), stop.clone()),
        controllers::nodes::spawn(ctx, stop),
    ])
}

//! Forwards the engine's announcements to the bus as signals, and emits
//! `PropertiesChanged` when a property's value actually changed (at most
//! every [`PROPERTIES_EVERY`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use zbus::object_server::InterfaceRef;
use zbus::Connection;

use super::interface::Antibody;
use crate::engine::Engine;
use crate::events::AgentEvent;

#[derive(Default, PartialEq, Clone, Copy)]
struct Counters {
    queue_depth: u32,
    healthy: bool,
    active: u32,
}

/// `PropertiesChanged` goes out at most this often. A queue that fills and
/// drains a thousand times a second is no use to a listener as a thousand
/// signals, and each costs the bus daemon as much as a method call. A
/// change after a quiet spell goes out at once; the value the counters
/// settle on always goes out, at most this long after it changed.
const PROPERTIES_EVERY: Duration = Duration::from_millis(100);

/// Runs until `connection` closes: a new connection gets its own pump.
pub async fn pump(engine: Arc<Engine>, iface: InterfaceRef<Antibody>, connection: Connection) {
    let mut rx = engine.events().subscribe();
    let mut last = Counters::default();
    let mut last_sent = Instant::now() - PROPERTIES_EVERY;
    let mut unsent = false;
    loop {
        let received = tokio::select! {
            received = rx.recv() => Some(received),
            _ = tokio::time::sleep_until(last_sent + PROPERTIES_EVERY), if unsent => None,
            _ = connection.closed() => return,
        };
        let event = match received {
            Some(Ok(event)) => event,
            // Signals were missed under load; counters are re-read anyway.
            Some(Err(RecvError::Lagged(_))) | None => AgentEvent::CountersChanged,
            Some(Err(RecvError::Closed)) => return,
        };
        let emitter = iface.signal_emitter();
        let sent = match &event {
            AgentEvent::PlanQueued {
                plan_id,
                source,
                severity,
            } => Antibody::plan_queued(emitter, plan_id, source, severity).await,
            AgentEvent::PlanStatusChanged { plan_id, status } => {
                Antibody::plan_status_changed(emitter, plan_id, status).await
            }
            AgentEvent::ActionFinished {
                plan_id,
                index,
                kind,
                outcome,
            } => Antibody::action_finished(emitter, plan_id, *index, kind, outcome).await,
            AgentEvent::CountersChanged => Ok(()),
        };
        if let Err(e) = sent {
            eprintln!("<4>antibody: cannot emit a D-Bus signal: {e}");
        }
        // Under load many events queue up: emit their signals, then read the
        // counters (a walk over the plans) once for the lot, not per event.
        unsent = true;
        if !rx.is_empty() || last_sent.elapsed() < PROPERTIES_EVERY {
            continue;
        }
        unsent = false;
        last_sent = Instant::now();
        let now = Counters {
            queue_depth: engine.queue_depth(),
            healthy: engine.healthy(),
            active: engine.active_mitigations(),
        };
        if now != last {
            let guard = iface.get().await;
            if now.queue_depth != last.queue_depth {
                let _ = guard.queue_depth_changed(emitter).await;
            }
            if now.healthy != last.healthy {
                let _ = guard.healthy_changed(emitter).await;
            }
            if now.active != last.active {
                let _ = guard.active_mitigations_changed(emitter).await;
            }
            last = now;
        }
    }
}

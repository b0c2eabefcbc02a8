//! Side effects behind small traits, so the engine's logic can be tested with
//! recording fakes while the real implementations are proven against real
//! components (DESIGN.md §7).

use std::sync::Arc;

pub mod files;
pub mod http;
pub mod job_board;
pub mod journal;
pub mod nft;
pub mod notifier;
pub mod sdnotify;
pub mod systemd;
pub mod unit_files;

/// The system interfaces actions use.
#[derive(Clone)]
pub struct Sys {
    pub notifier: Arc<dyn notifier::Notifier>,
    pub systemd: Arc<dyn systemd::Systemd>,
    pub firewall: Arc<dyn nft::Firewall>,
    /// Call backs to alert sources.
    pub http: Arc<dyn http::HttpClient>,
}

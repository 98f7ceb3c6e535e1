//! State shared by the admin API, the guard and the signal handlers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fastgate_layer::audit::{AuditStats, SpoolStats};
use fastgate_store::Store;

use crate::config::Settings;

/// Everything the admin side of the server shares.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// When the server started.
    pub started: Instant,
    settings: ArcSwap<Settings>,
    audit: AuditStats,
    spool: Option<SpoolStats>,
    spool_unusable: bool,
    last_error: Mutex<Option<String>>,
    draining: AtomicBool,
}

impl AppState {
    /// New state over a store, settings and the audit pipeline's counters.
    pub fn new(store: Store, settings: Settings, audit: AuditStats) -> Self {
        Self {
            store,
            started: Instant::now(),
            settings: ArcSwap::from_pointee(settings),
            audit,
            spool: None,
            spool_unusable: false,
            last_error: Mutex::new(None),
            draining: AtomicBool::new(false),
        }
    }

    /// The current settings (replaced atomically on reload).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Swap in reloaded settings.
    pub fn replace_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// With the audit spool's counters (when `audit.spool_file` is set).
    pub fn with_spool(mut self, spool: Option<SpoolStats>) -> Self {
        self.spool = spool;
        self
    }

    /// `audit.spool_file` names a file that could not be used (its directory not writable, or
    /// its lock held by another process): the gateway runs without a spool, which `/health`
    /// reports (`audit_spool_unusable`).
    pub fn with_spool_unusable(mut self, unusable: bool) -> Self {
        self.spool_unusable = unusable;
        self
    }

    /// Whether `audit.spool_file` is set but could not be used (see
    /// [`with_spool_unusable`](Self::with_spool_unusable)).
    pub fn spool_unusable(&self) -> bool {
        self.spool_unusable
    }

    /// Counters of the audit spool file, when there is one.
    pub fn spool_stats(&self) -> Option<&SpoolStats> {
        self.spool.as_ref()
    }

    /// Counters of the audit pipeline.
    pub fn audit_stats(&self) -> &AuditStats {
        &self.audit
    }

    /// The gateway is stopping (SIGTERM/SIGINT): from now on `/health` answers 503 `draining`, so
    /// that a load balancer takes the instance out of rotation while it still serves (see
    /// `app.shutdown_accept_grace`).
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`begin_draining`](Self::begin_draining) was called.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Remember an internal error for `/health` (the text never holds a secret).
    pub fn record_error(&self, context: &str, err: &dyn std::error::Error) {
        // The log gets the causes (a read-only file, a full disk, a refused connection); the
        // text kept for /health, which anyone may read, only the top message.
        tracing::error!(error = %fastgate_layer::ErrorChain(err), context, "internal error");
        let text = format!(
            "{} {context}: {err}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(text);
        }
    }

    /// The most recent internal error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|s| s.clone())
    }

    /// Whether the database answers a trivial query within two seconds.
    pub async fn db_reachable(&self) -> bool {
        match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.record_error("database", &e);
                false
            }
            Err(_) => {
                self.record_error("database", &Timeout);
                false
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ping timed out")]
struct Timeout;

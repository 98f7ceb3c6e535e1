//! The store's one long-running task, spawned and tracked by the server.

use std::future::Future;
use std::time::{Duration, SystemTime};

use fastgate_layer::ErrorChain;
use sqlx::postgres::PgListener;

use crate::keys::NOTIFY_CHANNEL;
use crate::{Db, Store};

/// What [`Store::background`] does and how often.
#[derive(Clone, Debug)]
pub struct BackgroundOptions {
    /// How often accumulated key usage is written.
    pub usage_flush_interval: Duration,
    /// How often the key-change watermark is polled (catches changes made by other processes on
    /// SQLite, and anything a lost PostgreSQL notification connection missed).
    pub invalidation_poll_interval: Duration,
    /// Audit retention; `None` keeps records forever.
    pub retention: Option<Duration>,
    /// How often the retention purge runs (the first run is one interval after start).
    pub purge_interval: Duration,
    /// Rows deleted per purge transaction.
    pub purge_batch: u32,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        Self {
            usage_flush_interval: Duration::from_secs(5),
            invalidation_poll_interval: Duration::from_secs(1),
            retention: None,
            purge_interval: Duration::from_secs(3600),
            purge_batch: 1000,
        }
    }
}

enum Event {
    Shutdown,
    Poll,
    Notified(Result<Option<sqlx::postgres::PgNotification>, sqlx::Error>),
}

/// An interval of `d` (at least 10 ms), first ticking one `d` from now; late ticks are delayed.
fn tick(d: Duration) -> tokio::time::Interval {
    let d = d.max(Duration::from_millis(10));
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Resolves once the shutdown was signalled (or its sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

impl Store {
    /// Usage flush, cross-instance key invalidation and retention purge, until `shutdown`
    /// resolves (a key poll or purge under way then is dropped, a usage flush given
    /// [`usage_flush_limit`](Self::usage_flush_limit) to end); then a final usage flush, bounded
    /// by that limit, whose counts go to the usage file ([`Store::keep_usage_in`]) if it fails
    /// (or are lost, with a warning, without one). Give it twice that limit and a little more
    /// after `shutdown`. Usage flushes, key change polls and notifications, and purges run
    /// beside each other: a usage flush waiting for the database (a row lock, at most
    /// [`USAGE_FLUSH_LOCK_TIMEOUT`](crate::USAGE_FLUSH_LOCK_TIMEOUT) on PostgreSQL) or a long
    /// purge holds up neither of the others. Never spawns: the caller runs (and tracks) the
    /// future.
    pub fn background(
        &self,
        opts: BackgroundOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let store = self.clone();
        async move {
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let relay = async move {
                shutdown.await;
                let _ = stop.send(true);
            };
            tokio::join!(
                relay,
                store.usage_loop(opts.usage_flush_interval, stopped(stop_rx.clone())),
                store.watch_loop(&opts, stopped(stop_rx.clone())),
                store.purge_loop(&opts, stopped(stop_rx)),
            );
        }
    }

    /// The usage flushes of [`background`](Self::background), and its final flush.
    async fn usage_loop(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut flush = tick(interval);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = flush.tick() => {}
            }
            // Not bounded here: a large batch on a slow database takes what it takes (a bound
            // would put it back, larger, every time). A row lock is bounded by the flush itself.
            let flush = self.flush_usage();
            tokio::pin!(flush);
            tokio::select! {
                r = &mut flush => {
                    if let Err(e) = r {
                        tracing::warn!(error = %ErrorChain(&e), "key usage flush failed; will retry");
                    }
                }
                () = &mut shutdown => {
                    // Its commit may have begun (dropped then, its counts would be neither in
                    // memory nor surely written): given the limit to end; what it leaves goes
                    // to the final flush below.
                    if let Ok(Err(e)) = tokio::time::timeout(self.usage_flush_limit(), flush).await
                    {
                        tracing::warn!(error = %ErrorChain(&e), "key usage flush failed at shutdown");
                    }
                    break;
                }
            }
        }
        // Bounded (unlike the periodic ones), so that the counts are saved to the usage file
        // (when there is one) before the caller stops waiting for this task, also on a
        // database that does not answer; a batch too large for the bound is saved, and the
        // next process's unbounded flushes write it.
        if let Err(e) = self.bounded_flush_usage().await {
            self.keep_after_final_flush_failed(&e).await;
        }
    }

    /// The retention purge and the rotated-secret cleanup of [`background`](Self::background),
    /// in a loop of their own: a purge of a large backlog can take minutes, while key changes
    /// made elsewhere must keep arriving (a revocation waited for the purge to end). Work under
    /// way when the shutdown comes is dropped (it is done again at the next start).
    async fn purge_loop(&self, opts: &BackgroundOptions, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut purge = tick(opts.purge_interval);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = purge.tick() => {}
            }
            let work = async {
                if let Some(keep) = opts.retention {
                    let cutoff = SystemTime::now() - keep;
                    match self.purge_audit_older_than(cutoff, opts.purge_batch).await {
                        Ok(n) if n > 0 => tracing::info!(rows = n, "audit retention purge"),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %ErrorChain(&e), "audit retention purge failed")
                        }
                    }
                }
                if let Err(e) = self.purge_expired_secrets(SystemTime::now()).await {
                    tracing::debug!(error = %e, "rotated-secret cleanup failed");
                }
            };
            tokio::select! {
                () = work => {}
                () = &mut shutdown => break,
            }
        }
    }

    /// Key change polls and notifications of [`background`](Self::background).
    async fn watch_loop(&self, opts: &BackgroundOptions, shutdown: impl Future<Output = ()>) {
        let store = self;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut poll = tick(opts.invalidation_poll_interval);
        let mut listener: Option<PgListener> = store.connect_listener().await;
        let mut generation = store.key_generation().await.ok();

        loop {
            let event = {
                let notified = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = &mut shutdown => Event::Shutdown,
                    _ = poll.tick() => Event::Poll,
                    r = notified => Event::Notified(r),
                }
            };
            // The work of an event, given up when the shutdown comes meanwhile (so that the
            // caller's wait is spent on the final usage flush). A poll is safe to drop (read
            // again later).
            macro_rules! unless_shutdown {
                ($work:expr) => {
                    tokio::select! {
                        () = $work => {}
                        () = &mut shutdown => break,
                    }
                };
            }
            match event {
                Event::Shutdown => break,
                Event::Poll => unless_shutdown!(async {
                    if matches!(store.inner.db, Db::Postgres(_)) && listener.is_none() {
                        listener = store.connect_listener().await;
                        if listener.is_some() {
                            // Notifications may have been missed while disconnected:
                            // re-validate every cached key on its next use.
                            store.expire_all();
                        }
                    }
                    match store.key_generation().await {
                        Ok(g) => {
                            if generation.is_some_and(|old| old != g) {
                                // Some key changed (anything the key check reads): each
                                // cached key is read again on its next use, but the entries
                                // stay as the last known state should the database fail
                                // before that (dropping them made every key 503 then).
                                store.expire_all();
                            }
                            generation = Some(g);
                        }
                        Err(e) => {
                            tracing::debug!(error = %ErrorChain(&e), "key change poll failed")
                        }
                    }
                }),
                Event::Notified(Ok(Some(n))) => {
                    store.invalidate_key(n.payload());
                    // The change may be an import: its secret may have been tried before.
                    store.inner.cache.forget_unknown();
                }
                Event::Notified(Ok(None)) => {
                    // The connection dropped; PgListener reconnects on the next call, and
                    // anything sent meanwhile is lost: re-validate every cached key, but keep
                    // serving them if the database itself is what went away.
                    store.expire_all();
                }
                Event::Notified(Err(e)) => {
                    tracing::warn!(error = %e, "key change listener failed; reconnecting on next poll");
                    listener = None;
                    store.expire_all();
                }
            }
        }
    }

    /// Longest the final usage flush (at shutdown) may take: the pool's acquire timeout plus
    /// SQLite's busy timeout (8 s by default). A flush that has not ended by then is dropped,
    /// its counts saved to the usage file (unless its commit had begun: they may be written,
    /// and are not counted twice).
    pub fn usage_flush_limit(&self) -> Duration {
        self.inner.opts.acquire_timeout + self.inner.opts.sqlite_busy_timeout
    }

    /// [`flush_usage`](Self::flush_usage) within [`usage_flush_limit`](Self::usage_flush_limit).
    async fn bounded_flush_usage(&self) -> Result<usize, crate::StoreError> {
        tokio::time::timeout(self.usage_flush_limit(), self.flush_usage())
            .await
            .unwrap_or(Err(crate::StoreError::Unavailable))
    }

    async fn connect_listener(&self) -> Option<PgListener> {
        let Db::Postgres(pool) = &self.inner.db else {
            return None;
        };
        let mut l = match PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open key change listener");
                return None;
            }
        };
        match l.listen(NOTIFY_CHANNEL).await {
            Ok(()) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for key changes");
                None
            }
        }
    }
}

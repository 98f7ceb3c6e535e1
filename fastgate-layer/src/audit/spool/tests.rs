//! The spool against a real file in a temporary directory and a sink that fails on demand.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::audit::MemorySink;

/// A [`MemorySink`] that refuses batches while `down` is set.
#[derive(Clone, Default)]
struct Flaky {
    sink: MemorySink,
    down: Arc<AtomicBool>,
    /// Refuse after this many more successful batches (`u64::MAX`: never).
    fail_after: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error("database unreachable")]
struct Down;

impl Flaky {
    fn new() -> Self {
        let f = Self::default();
        f.fail_after.store(u64::MAX, Ordering::Relaxed);
        f
    }
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}

impl AuditSink for Flaky {
    type Error = Down;

    async fn write_batch(&mut self, events: &AuditBatch) -> Result<(), Down> {
        let left = self.fail_after.load(Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) || left == 0 {
            return Err(Down);
        }
        if left != u64::MAX {
            self.fail_after.store(left - 1, Ordering::Relaxed);
        }
        self.sink.write_batch(events).await.map_err(|_| Down)
    }
}

fn event(i: usize) -> AuditEvent {
    let mut e = AuditEvent::new(format!("req-{i}"), "POST", "/proxy/v1/chat/completions");
    e.started_at = UNIX_EPOCH + Duration::from_micros(1_790_000_000_000_000 + i as u64);
    e.key_id = Some(Arc::from("key-1"));
    e.source_path = Some(Arc::from("team-a"));
    e.client_ip = Some("10.0.0.7".into());
    e.user_agent = Some("sdk/1.0 \"quoted\"\n".into());
    e.target_url = Some(Arc::from("http://backend/v1/chat/completions"));
    e.status = 200;
    e.is_stream = i.is_multiple_of(2);
    e.model = Some("m-ü".into());
    e.request_bytes = 72;
    e.response_bytes = 512 + i as u64;
    e.ttfb = Some(Duration::from_micros(1_234));
    e.duration = Duration::from_micros(56_789);
    e.outcome = if i.is_multiple_of(3) {
        Outcome::UpstreamTimeout
    } else {
        Outcome::Completed
    };
    e.error_code = i.is_multiple_of(3).then_some("upstream_timeout");
    e.usage = Some(TokenUsage {
        prompt_tokens: Some(3),
        completion_tokens: Some(4),
        total_tokens: 7,
    });
    e
}

fn batch(range: std::ops::Range<usize>) -> AuditBatch {
    range.map(event).collect()
}

/// A temporary directory (kept alive by the caller), the spool file's path in it, and a sink
/// that is down when `down` says so.
fn setup(down: bool) -> (tempfile::TempDir, PathBuf, Flaky) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.spool");
    let flaky = Flaky::new();
    flaky.set_down(down);
    (dir, path, flaky)
}

fn spool(flaky: &Flaky, path: &Path) -> SpoolSink<Flaky> {
    SpoolSink::open(flaky.clone(), path)
        .unwrap()
        .retry_after(Duration::ZERO, Duration::ZERO)
}

#[tokio::test]
async fn a_working_sink_is_written_directly_and_no_file_is_made() {
    let (_dir, path, flaky) = setup(false);
    let mut s = spool(&flaky, &path);
    s.write_batch(&batch(0..3)).await.unwrap();
    assert_eq!(flaky.sink.events(), batch(0..3).to_vec());
    assert!(!path.exists());
    assert_eq!((s.stats().spooled(), s.stats().waiting()), (0, 0));
}

#[tokio::test]
async fn refused_batches_wait_in_the_file_and_reach_the_sink_in_order_intact() {
    let (_dir, path, flaky) = setup(false);
    let mut s = spool(&flaky, &path);

    assert!(!s.stats().failing());
    flaky.set_down(true);
    s.write_batch(&batch(0..2)).await.unwrap();
    s.write_batch(&batch(2..5)).await.unwrap();
    assert!(flaky.sink.events().is_empty());
    assert_eq!(s.stats().waiting(), 5);
    assert!(
        s.stats().failing(),
        "the sink refuses: the events go to the file"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Back: the next batch goes behind the spooled ones, and all of them are written.
    flaky.set_down(false);
    s.write_batch(&batch(5..6)).await.unwrap();
    assert_eq!(flaky.sink.events(), batch(0..6).to_vec());
    assert!(!path.exists(), "an empty spool is removed");
    let st = s.stats();
    assert_eq!((st.waiting(), st.spooled(), st.replayed()), (0, 6, 6));
    assert!(!st.failing());

    // Working again: straight through.
    s.write_batch(&batch(6..7)).await.unwrap();
    assert_eq!(flaky.sink.events().len(), 7);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_spool_left_by_a_stopped_process_is_replayed_by_the_next() {
    let (_dir, path, flaky) = setup(true);
    let mut s = spool(&flaky, &path);
    s.write_batch(&batch(0..3)).await.unwrap();
    drop(s);

    flaky.set_down(false);
    let mut next = spool(&flaky, &path);
    assert_eq!(next.stats().waiting(), 3);
    assert_eq!(next.replay_now(Duration::from_secs(60)).await.unwrap(), 3);
    assert_eq!(flaky.sink.events(), batch(0..3).to_vec());
    assert!(!path.exists());
}

#[tokio::test]
async fn a_replay_cut_short_resumes_at_its_saved_position_without_duplicates() {
    let (_dir, path, flaky) = setup(true);
    let mut s = spool(&flaky, &path);
    let n = REPLAY_BATCH + 88;
    s.write_batch(&batch(0..n)).await.unwrap();
    drop(s);

    // The sink takes one replayed batch, then fails (the process then stops).
    flaky.set_down(false);
    flaky.fail_after.store(1, Ordering::Relaxed);
    let mut s = spool(&flaky, &path);
    assert!(s.replay_now(Duration::from_secs(60)).await.is_err());
    assert_eq!(flaky.sink.events().len(), REPLAY_BATCH);
    assert_eq!(s.stats().waiting(), 88);
    drop(s);

    flaky.fail_after.store(u64::MAX, Ordering::Relaxed);
    let mut s = spool(&flaky, &path);
    assert_eq!(s.stats().waiting(), 88);
    assert_eq!(s.replay_now(Duration::from_secs(60)).await.unwrap(), 88);
    assert_eq!(flaky.sink.events(), batch(0..n).to_vec());
    assert!(!path.exists());
    let mut pos = path.clone().into_os_string();
    pos.push(".pos");
    assert!(!Path::new(&pos).exists());
}

#[tokio::test]
async fn a_line_torn_by_a_crash_is_skipped_and_the_next_append_is_not_lost() {
    let (_dir, path, flaky) = setup(true);
    let mut s = spool(&flaky, &path);
    s.write_batch(&batch(0..2)).await.unwrap();
    drop(s);
    // A crash in the middle of the next append.
    let full = std::fs::read(&path).unwrap();
    let line_end = full.iter().position(|b| *b == b'\n').unwrap();
    let mut torn = full.clone();
    torn.extend_from_slice(&full[..line_end / 2]);
    std::fs::write(&path, torn).unwrap();

    let mut s = spool(&flaky, &path);
    assert_eq!(s.stats().waiting(), 3, "two events and the torn line");
    s.write_batch(&batch(2..3)).await.unwrap(); // still down: appended after the torn line
    flaky.set_down(false);
    s.write_batch(&batch(3..4)).await.unwrap();
    assert_eq!(flaky.sink.events(), batch(0..4).to_vec());
    // The torn line is a lost event, noted as such.
    assert_eq!(s.stats().lost(), 1);
    assert!(s.stats().since_last_loss().is_some());
    assert_eq!(s.stats().skipped(), 1);
    assert!(!path.exists());
}

#[tokio::test]
async fn when_the_file_cannot_be_written_either_the_sink_error_is_returned() {
    let (_dir, path, flaky) = setup(true);
    let mut s = spool(&flaky, &path);
    // A directory where the file would be created: every append fails.
    std::fs::create_dir(&path).unwrap();
    let err = s.write_batch(&batch(0..1)).await.unwrap_err();
    assert!(err.to_string().contains("database unreachable"), "{err}");
    assert_eq!(s.stats().waiting(), 0);
}

#[tokio::test]
async fn a_full_disk_is_an_error_not_a_batch_counted_as_spooled() {
    let (_dir, path, flaky) = setup(true);
    let mut s = spool(&flaky, &path);
    // Every write to /dev/full fails with ENOSPC, as on a full disk; opening it succeeds.
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let err = s.write_batch(&batch(0..3)).await.unwrap_err();
    assert!(err.to_string().contains("database unreachable"), "{err}");
    assert_eq!(err.spool.raw_os_error(), Some(28), "{err}"); // ENOSPC
    assert_eq!((s.stats().waiting(), s.stats().spooled()), (0, 0));
}

#[tokio::test]
async fn while_the_sink_is_down_it_is_not_tried_for_every_batch() {
    let (_dir, path, flaky) = setup(true);
    let mut s = SpoolSink::open(flaky.clone(), &path)
        .unwrap()
        .retry_after(Duration::from_secs(3600), Duration::from_secs(3600));
    s.write_batch(&batch(0..1)).await.unwrap();
    flaky.set_down(false);
    // The sink works again, but the next try is an hour away: appended, not replayed.
    s.write_batch(&batch(1..2)).await.unwrap();
    assert!(flaky.sink.events().is_empty());
    assert_eq!(s.stats().waiting(), 2);
}

#[test]
fn error_codes_read_back_are_the_same_static_strings() {
    let a = intern("upstream_timeout");
    let b = intern("upstream_timeout");
    assert!(std::ptr::eq(a, b));
    assert_eq!(a, "upstream_timeout");
}

#[tokio::test]
async fn with_no_traffic_the_file_is_written_through_when_idle() {
    let (_dir, path, flaky) = setup(true);
    let mut s = spool(&flaky, &path);
    s.write_batch(&batch(0..2)).await.unwrap();
    s.idle().await; // still down
    assert!(flaky.sink.events().is_empty());
    flaky.set_down(false);
    s.idle().await;
    assert_eq!(flaky.sink.events(), batch(0..2).to_vec());
    assert!(!path.exists());
}

#[tokio::test]
async fn a_file_removed_while_it_held_events_does_not_swallow_the_next_ones() {
    let (_dir, path, flaky) = setup(true);
    let mut s = spool(&flaky, &path);
    s.write_batch(&batch(0..600)).await.unwrap();
    // Back for one replayed batch only: the position moves past the first 512 lines.
    flaky.set_down(false);
    flaky.fail_after.store(1, Ordering::Relaxed);
    s.write_batch(&batch(600..601)).await.unwrap();
    assert_eq!(flaky.sink.events().len(), REPLAY_BATCH);
    assert_eq!(s.stats().waiting(), 601 - REPLAY_BATCH as u64);
    // Removed by hand: its events are gone, but the next ones are not read from the old
    // position of a new, shorter file.
    assert_eq!(s.stats().lost(), 0);
    std::fs::remove_file(&path).unwrap();
    s.write_batch(&batch(1000..1002)).await.unwrap();
    assert_eq!(s.stats().waiting(), 2);
    assert_eq!(
        s.stats().lost(),
        601 - REPLAY_BATCH as u64,
        "the removed file's events"
    );
    flaky.fail_after.store(u64::MAX, Ordering::Relaxed);
    s.write_batch(&batch(1002..1003)).await.unwrap();
    let got: Vec<String> = flaky.sink.events()[REPLAY_BATCH..]
        .iter()
        .map(|e| e.request_id.clone())
        .collect();
    assert_eq!(got, ["req-1000", "req-1001", "req-1002"]);
    assert!(!path.exists());
}

#[tokio::test]
async fn an_unreadable_spool_does_not_hold_up_the_start() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: it exists, but every read fails.
    let path = dir.path().join("audit.spool");
    std::fs::create_dir(&path).unwrap();
    let flaky = Flaky::new();
    let mut s = SpoolSink::open(flaky.clone(), &path)
        .map(|s| s.retry_after(Duration::ZERO, Duration::ZERO));
    if let Ok(s) = s.as_mut() {
        let started = std::time::Instant::now();
        let _ = s.replay_now(Duration::from_secs(60)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_spool_file_is_refused() {
    let (_dir, path, flaky) = setup(false);
    let first = spool(&flaky, &path);
    let second = SpoolSink::open(flaky.clone(), &path);
    assert_eq!(
        second.map(|_| ()).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    drop(first);
    assert!(SpoolSink::open(flaky.clone(), &path).is_ok());
}

#[test]
fn usage_of_older_spools_reads_back_and_unreported_counts_stay_null() {
    // A line as the version before null counts wrote it: `usage` three numbers.
    let old = r#"{"request_id":"r","started_at_us":1,"key_id":null,"source_path":null,"client_ip":null,"user_agent":null,"method":"POST","path":"/p","target_url":null,"status":200,"is_stream":false,"model":null,"request_bytes":1,"response_bytes":2,"ttfb_us":null,"duration_us":3,"outcome":"completed","error_code":null,"usage":[3,4,7]}"#;
    let e = AuditEvent::from(serde_json::from_str::<Spooled>(old).unwrap());
    assert_eq!(
        e.usage,
        Some(TokenUsage {
            prompt_tokens: Some(3),
            completion_tokens: Some(4),
            total_tokens: 7,
        })
    );
    let mut embedding = event(1);
    embedding.usage = Some(TokenUsage {
        prompt_tokens: Some(5),
        completion_tokens: None,
        total_tokens: 5,
    });
    let line = serde_json::to_string(&Spooled::from(&embedding)).unwrap();
    let back = AuditEvent::from(serde_json::from_str::<Spooled>(&line).unwrap());
    assert_eq!(back.usage, embedding.usage);
}

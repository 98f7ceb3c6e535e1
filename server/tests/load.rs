//! Load in the suite (kept small for debug builds; `scripts/load-100k.sh` does the big runs):
//! many concurrent streams all complete byte-identical, and a burst of N requests leaves exactly
//! N audit rows.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

async fn rows_for(fg: &Fastgate, key_id: &str, n: usize) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let v: serde_json::Value = fg
            .admin_get(&format!("/admin/logs?limit=1000&key_id={key_id}{cursor}"))
            .await
            .json()
            .await
            .unwrap();
        all.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) if all.len() < n * 2 => cursor = format!("&cursor={c}"),
            _ => break,
        }
    }
    all
}

#[tokio::test]
async fn concurrent_streams_complete_and_a_burst_leaves_exactly_that_many_rows() {
    let streams: usize = std::env::var("FASTGATE_LOAD_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let burst: usize = std::env::var("FASTGATE_LOAD_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let created = fg.create_key("load").await;
    let key = created["api_key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(streams)
        .build()
        .unwrap();

    // N streams open at the same time (each lasts ~0.5 s upstream); every one byte-identical.
    let t = Instant::now();
    let calls: Vec<_> = (0..streams)
        .map(|_| {
            let req = http
                .post(fg.proxy_url())
                .header("X-API-Key", &key)
                .body(chat_body(true));
            tokio::spawn(async move {
                let res = req.send().await.unwrap();
                assert_eq!(res.status(), 200);
                let rid = request_id(&res);
                (rid, res.text().await.unwrap())
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for c in calls {
        let (rid, body) = c.await.unwrap();
        assert_eq!(body, full_sse());
        ids.insert(rid);
    }
    assert_eq!(ids.len(), streams);
    eprintln!("{streams} concurrent streams in {:?}", t.elapsed());

    // A burst of plain requests, 100 in flight at a time.
    let t = Instant::now();
    let mut burst_ids = HashSet::new();
    let mut left = burst;
    while left > 0 {
        let n = left.min(100);
        left -= n;
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let req = http
                    .post(fg.proxy_url())
                    .header("X-API-Key", &key)
                    .body(chat_body(false));
                tokio::spawn(async move {
                    let res = req.send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    request_id(&res)
                })
            })
            .collect();
        for c in calls {
            burst_ids.insert(c.await.unwrap());
        }
    }
    assert_eq!(burst_ids.len(), burst);
    eprintln!("{burst} requests in {:?}", t.elapsed());

    // Exactly one row per request: poll until the queue is empty and every row is there.
    let total = streams + burst;
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let (_, h) = fg.health().await;
        let rows = rows_for(&fg, &key_id, total).await;
        if rows.len() >= total && h["audit"]["queue_depth"] == 0 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} rows: {h}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows.len(), total, "exactly one audit row per request");
    let row_ids: HashSet<String> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    let sent: HashSet<String> = ids.union(&burst_ids).cloned().collect();
    assert_eq!(row_ids, sent);
    assert_eq!(
        rows.iter().filter(|r| r["is_stream"] == true).count(),
        streams
    );
    assert!(rows.iter().all(|r| r["outcome"] == "completed"));
    let (_, h) = fg.health().await;
    assert_eq!(h["audit"]["dropped"], 0);
    assert_eq!(h["audit"]["lost"], 0);
}

//! Nightly-free fuzzing: seeded random inputs (structured and mutated from the committed corpus in
//! `tests/fuzz-corpus/`) for the key extraction, the SSE/JSON usage scanner (plain, and through
//! a gzip or deflate decoder) and the config loader,
//! each run for a bounded time. Properties: no panic, plus the invariants named in each target.
//!
//! `cargo test` runs each target for `FASTGATE_FUZZ_SECONDS` (default 1) seconds;
//! `scripts/fuzz.sh SECONDS` runs them longer. `FASTGATE_FUZZ_SEED` replays a run (the seed is
//! printed).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use fastgate_layer::audit::decode::{ContentCoding, DECODE_BUFFER, DecodingScanner};
use fastgate_layer::audit::scan::{SCAN_WINDOW, UsageScanner};
use fastgate_layer::auth::extract_key;
use http::{HeaderMap, HeaderName, HeaderValue};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn budget() -> Duration {
    let secs: f64 = std::env::var("FASTGATE_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

fn rng(target: &str) -> StdRng {
    let seed = std::env::var("FASTGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().next_u64());
    eprintln!("fuzz {target}: seed {seed} (FASTGATE_FUZZ_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

/// Run `case` until the time budget is spent; returns the number of cases.
fn run(target: &str, mut case: impl FnMut(&mut StdRng)) -> u64 {
    let mut r = rng(target);
    let end = Instant::now() + budget();
    let mut n = 0u64;
    while Instant::now() < end || n < 200 {
        case(&mut r);
        n += 1;
    }
    eprintln!("fuzz {target}: {n} cases in {:?}", budget());
    n
}

fn corpus(prefix: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "no {prefix}* files in {}", dir.display());
    out.sort();
    out
}

const INTERESTING: &[&[u8]] = &[
    b"\"usage\"",
    b"{",
    b"}",
    b":",
    b"\n\n",
    b"\r\n",
    b"\r",
    b"data: ",
    b"[DONE]",
    b"\"",
    b"\\",
    b"0",
    b"-1",
    b"18446744073709551616",
    b"null",
    b"[",
    b"]",
    b"~",
    b"&a",
    b"*a",
    b"!!str",
    b"  ",
    b"\t",
    b"#",
    b"- ",
    b"\xff",
    b"\xc3\xa9",
    b"e9",
    b"1e400",
    b"prompt_tokens",
    b"total_tokens",
    b"admin_token",
    b"backend_url",
    b"http://",
    b"FASTGATE__",
];

/// A random edit of `input`: flip, insert, delete, duplicate or splice an interesting token.
fn mutate(r: &mut StdRng, input: &mut Vec<u8>) {
    for _ in 0..r.random_range(1..8) {
        let len = input.len();
        match r.random_range(0..6) {
            0 if len > 0 => {
                let i = r.random_range(0..len);
                input[i] ^= 1 << r.random_range(0..8);
            }
            1 => {
                let i = r.random_range(0..=len);
                let tok = INTERESTING[r.random_range(0..INTERESTING.len())];
                input.splice(i..i, tok.iter().copied());
            }
            2 if len > 0 => {
                let a = r.random_range(0..len);
                let b = (a + r.random_range(0..64)).min(len);
                input.drain(a..b);
            }
            3 if len > 0 => {
                let a = r.random_range(0..len);
                let b = (a + r.random_range(0..128)).min(len);
                let piece = input[a..b].to_vec();
                let at = r.random_range(0..=input.len());
                input.splice(at..at, piece);
            }
            4 => {
                let i = r.random_range(0..=len);
                input.insert(i, r.random());
            }
            _ => {}
        }
    }
}

// === key extraction ===

fn graphic(r: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(r.random_range(0x21u8..0x7f)))
        .collect()
}

fn random_value(r: &mut StdRng) -> Vec<u8> {
    let len = r.random_range(0..300);
    (0..len)
        .map(|_| match r.random_range(0..10) {
            0 => b' ',
            1 => b'\t',
            2 => r.random_range(0x80..=0xff),
            3 => r.random(),
            _ => r.random_range(0x21..0x7f),
        })
        .collect()
}

#[test]
fn fuzz_extract_key() {
    let names = [
        "x-api-key",
        "authorization",
        "x-other",
        "proxy-authorization",
    ];
    run("extract_key", |r| {
        let mut headers = HeaderMap::new();
        match r.random_range(0..4) {
            // Well-formed X-API-Key, padded: extracted exactly.
            0 => {
                let len = r.random_range(1..=256);
                let key = graphic(r, len);
                let pad = [" ", "\t", "  "][r.random_range(0..3)];
                headers.insert(
                    "x-api-key",
                    HeaderValue::from_str(&format!("{pad}{key}{pad}")).unwrap(),
                );
                assert_eq!(extract_key(&headers).unwrap().expose(), key);
            }
            // Well-formed Bearer with a random-case scheme: extracted exactly.
            1 => {
                let len = r.random_range(1..=256);
                let key = graphic(r, len);
                let scheme: String = "bearer"
                    .chars()
                    .map(|c| {
                        if r.random() {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect();
                headers.insert(
                    http::header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("{scheme} {key}")).unwrap(),
                );
                assert_eq!(extract_key(&headers).unwrap().expose(), key);
            }
            // Over-long keys are refused in both headers.
            2 => {
                let len = r.random_range(257..2000);
                let key = graphic(r, len);
                let (name, value) = if r.random() {
                    ("x-api-key", key.clone())
                } else {
                    ("authorization", format!("Bearer {key}"))
                };
                headers.insert(name, HeaderValue::from_str(&value).unwrap());
                assert!(extract_key(&headers).is_err());
            }
            // Anything at all: no panic, and a key, if any, is well-formed and was presented.
            _ => {
                for _ in 0..r.random_range(0..4) {
                    let name = HeaderName::from_static(names[r.random_range(0..names.len())]);
                    if let Ok(v) = HeaderValue::from_bytes(&random_value(r)) {
                        headers.append(name, v);
                    }
                }
                if let Ok(k) = extract_key(&headers) {
                    let k = k.expose();
                    assert!(!k.is_empty() && k.len() <= 256, "{k:?}");
                    assert!(k.bytes().all(|b| b.is_ascii_graphic()), "{k:?}");
                    assert!(
                        headers
                            .iter()
                            .any(|(_, v)| v.as_bytes().windows(k.len()).any(|w| w == k.as_bytes())),
                        "{k:?} was not presented"
                    );
                }
            }
        }
    });
}

// === usage scanner ===

fn split_push(r: &mut StdRng, scan: &mut UsageScanner, body: &[u8]) {
    let mut rest = body;
    while !rest.is_empty() {
        let n = r.random_range(1..=rest.len().min(257));
        scan.push(&rest[..n]);
        assert!(
            scan.buffered() <= SCAN_WINDOW,
            "scanner holds {} bytes",
            scan.buffered()
        );
        rest = &rest[n..];
    }
    scan.finish();
}

/// A well-formed SSE stream of up to 20 events, and the last usage in it.
/// Prompt, completion and total tokens as a scanner reports them.
type Counts = (Option<u64>, Option<u64>, u64);

fn well_formed_stream(r: &mut StdRng) -> (String, Option<Counts>) {
    let n = r.random_range(0..20);
    let nl = if r.random() { "\n\n" } else { "\r\n\r\n" };
    let mut body = String::new();
    let mut expected = None;
    for i in 0..n {
        if r.random_range(0..4) == 0 {
            let (p, c) = (r.random_range(0..1u64 << 40), r.random_range(0..100_000u64));
            body.push_str(&format!(
                "data: {{\"id\":\"x{i}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c},\"total_tokens\":{}}}}}{nl}",
                p + c
            ));
            expected = Some((Some(p), Some(c), p + c));
        } else {
            let text: String = (0..r.random_range(0..200))
                .map(|_| ['a', 'é', '"', '\\', ' ', '{', '}', '中'][r.random_range(0..8)])
                .collect();
            let text = serde_json::to_string(&text).unwrap();
            body.push_str(&format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":{text}}}}}]}}{nl}"
            ));
        }
    }
    // The stream's terminal event: Chat Completions', the Responses API's, Anthropic's.
    let half = &nl[..nl.len() / 2];
    let end = [
        "data: [DONE]".to_owned(),
        format!(
            "event: response.completed{half}data: {{\"type\":\"response.completed\",\"response\":{{\"usage\":null}}}}"
        ),
        "data: {\"type\":\"response.incomplete\",\"response\":{}}".to_owned(),
        format!("event: message_stop{half}data: {{\"type\":\"message_stop\"}}"),
    ];
    body.push_str(&end[r.random_range(0..end.len())]);
    body.push_str(nl);
    (body, expected)
}

#[test]
fn fuzz_sse_usage_scanner() {
    let seeds = corpus("sse-");
    run("usage_scanner", |r| {
        if r.random_range(0..3) == 0 {
            // Mutated corpus, any split: no panic, bounded memory.
            let mut body = seeds[r.random_range(0..seeds.len())].clone();
            mutate(r, &mut body);
            let mut scan = if r.random() {
                UsageScanner::sse()
            } else {
                UsageScanner::json()
            };
            split_push(r, &mut scan, &body);
            let mut whole = UsageScanner::sse();
            whole.push_complete(&body);
            return;
        }
        // A well-formed stream: the last usage chunk is found whatever the chunking.
        let (body, expected) = well_formed_stream(r);
        let mut scan = UsageScanner::sse();
        split_push(r, &mut scan, body.as_bytes());
        let got = scan
            .usage()
            .map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens));
        assert_eq!(got, expected, "stream: {body:?}");
        assert!(scan.terminal(), "stream: {body:?}");
    });
}

// === usage scanner through a decoder ===

fn compress(r: &mut StdRng, body: &[u8]) -> (ContentCoding, Vec<u8>) {
    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use std::io::Write;
    let level = Compression::new(r.random_range(0..=9));
    let kind = r.random_range(0..3);
    // Flushed at random points, as a streaming server flushes per event.
    let mut write = |w: &mut dyn Write| {
        let mut rest = body;
        while !rest.is_empty() {
            let n = r.random_range(1..=rest.len().min(300));
            w.write_all(&rest[..n]).unwrap();
            if r.random_range(0..4) == 0 {
                w.flush().unwrap();
            }
            rest = &rest[n..];
        }
    };
    match kind {
        0 => {
            let mut e = GzEncoder::new(Vec::new(), level);
            write(&mut e);
            (ContentCoding::Gzip, e.finish().unwrap())
        }
        1 => {
            let mut e = ZlibEncoder::new(Vec::new(), level);
            write(&mut e);
            (ContentCoding::Deflate, e.finish().unwrap())
        }
        _ => {
            let mut e = DeflateEncoder::new(Vec::new(), level);
            write(&mut e);
            (ContentCoding::Deflate, e.finish().unwrap())
        }
    }
}

#[test]
fn fuzz_decoding_usage_scanner() {
    let seeds = corpus("sse-");
    run("decoding_usage_scanner", |r| {
        // A corpus file (JSON or SSE scanning), or a well-formed stream with a known usage.
        let (body, sse, expected) = if r.random() {
            let seed = seeds[r.random_range(0..seeds.len())].clone();
            let mut direct = UsageScanner::json();
            direct.push(&seed);
            direct.finish();
            let usage = direct
                .usage()
                .map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens));
            (seed, false, usage)
        } else {
            let (body, usage) = well_formed_stream(r);
            (body.into_bytes(), true, usage)
        };
        let (coding, mut data) = compress(r, &body);
        let limit = r.random_range(0..2 * body.len() as u64 + 1);
        let mutated = r.random_range(0..2) == 0;
        if mutated {
            mutate(r, &mut data);
        }
        let plain = if sse {
            UsageScanner::sse()
        } else {
            UsageScanner::json()
        };
        let mut scan = DecodingScanner::with_limit(coding, plain, limit);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = r.random_range(1..=rest.len().min(257));
            scan.push(&rest[..n]);
            assert!(scan.buffered() <= SCAN_WINDOW);
            assert!(scan.decoded() <= limit + DECODE_BUFFER as u64);
            rest = &rest[n..];
        }
        scan.finish();
        if mutated {
            return; // no panic, bounded memory and work
        }
        // Intact: the usage of the uncompressed body, unless that is over the limit.
        let got = scan
            .usage()
            .map(|u| (u.prompt_tokens, u.completion_tokens, u.total_tokens));
        if (body.len() as u64) <= limit {
            assert!(!scan.failed(), "{coding:?} of {} bytes", body.len());
            assert_eq!(
                got,
                expected,
                "{coding:?}: {:?}",
                String::from_utf8_lossy(&body)
            );
        } else {
            assert!(scan.failed() && got.is_none());
        }
    });
}

// === config loader ===

#[test]
fn fuzz_config_loader() {
    let seeds = corpus("config-");
    let path = Path::new("fuzz.yaml");
    let env_keys = [
        "FASTGATE__APP__PORT",
        "FASTGATE__SECURITY__ADMIN_TOKEN",
        "FASTGATE__API_GATEWAY__BACKEND_URL",
        "FASTGATE__API_GATEWAY__STRIP_HEADERS",
        "FASTGATE__AUDIT__QUEUE_CAPACITY",
        "FASTGATE__NOPE__X",
        "FASTGATE____",
        "FASTGATE__APP",
    ];
    run("config_loader", |r| {
        let mut text = seeds[r.random_range(0..seeds.len())].clone();
        mutate(r, &mut text);
        let text = String::from_utf8_lossy(&text).into_owned();
        let env: Vec<(String, String)> = (0..r.random_range(0..3))
            .map(|_| {
                let mut v = random_value(r);
                v.truncate(40);
                (
                    env_keys[r.random_range(0..env_keys.len())].to_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        match fastgate_server::config::parse_config(path, &text, env) {
            Ok(config) => {
                // A config that parses must also validate or be refused cleanly, never panic.
                let _ = fastgate_server::config::Settings::from_config(path, config);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    });
}

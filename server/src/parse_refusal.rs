//! hyper's own answers to requests it cannot parse, given an OpenAI-shaped JSON body.
//!
//! A request line or header hyper's HTTP/1 parser refuses (a control character, a folded line,
//! a bad method or version, a head over 64 KiB or with more than 100 headers) never reaches a
//! service: hyper writes `400`, `414` or `431` with an empty body and closes the connection. Those
//! answers have one exact form (status line, then `connection: close`, `content-length: 0` and
//! `date`, nothing else), which no answer of FastGate's own has (its errors carry a JSON body, its
//! `/proxy` answers `X-Request-Id`). The client socket's writer ([`crate::front`]) looks for that
//! form while no request of the connection is in flight and writes [`replacement`] instead, so a
//! client sees the same `{"error":{"message","type","code"}}` as for every other refusal.

use fastgate_layer::error::error_body;

/// The answers hyper writes itself, with FastGate's code and message for each.
const REFUSALS: [(&[u8], &str, &str); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\n",
        "bad_request",
        "the request is not valid HTTP/1.1 (a malformed request line or header, such as a \
         control character in a header value)",
    ),
    (
        b"HTTP/1.1 414 URI Too Long\r\n",
        "uri_too_long",
        "the request's URI is too long",
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        "headers_too_large",
        "the request's head (request line and headers) is too large: at most 64 KiB and 100 \
         header lines",
    ),
];

/// What follows the status line in hyper's answer, up to the date's value.
const HEADERS: &[u8] = b"connection: close\r\ncontent-length: 0\r\ndate: ";

/// The length of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
const DATE_LEN: usize = 29;

/// Whether a write to the client may be one of hyper's answers: a cheap test on every write.
pub fn may_be_refusal(buf: &[u8]) -> bool {
    buf.len() < 128 && buf.starts_with(b"HTTP/1.1 4")
}

/// The answer to write instead of `buf` when `buf` is exactly one of hyper's answers to a request
/// it could not parse (status, headers and date kept); `None` for anything else.
pub fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    let (status_line, code, message) =
        REFUSALS.iter().find(|(line, _, _)| buf.starts_with(line))?;
    let rest = buf[status_line.len()..].strip_prefix(HEADERS)?;
    let date = rest.strip_suffix(b"\r\n\r\n")?;
    if date.len() != DATE_LEN || !date.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return None;
    }
    let body = error_body(message, code);
    let mut answer = Vec::with_capacity(buf.len() + 64 + body.len());
    answer.extend_from_slice(status_line);
    answer.extend_from_slice(b"content-type: application/json\r\nconnection: close\r\n");
    answer.extend_from_slice(format!("content-length: {}\r\ndate: ", body.len()).as_bytes());
    answer.extend_from_slice(date);
    answer.extend_from_slice(b"\r\n\r\n");
    answer.extend_from_slice(&body);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Fri, 27 Nov 2026 23:33:40 GMT";

    fn hyper_answer(status: &str) -> Vec<u8> {
        dated_answer(status, DATE)
    }

    fn dated_answer(status: &str, date: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"
        )
        .into_bytes()
    }

    fn split(answer: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(answer.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        (head.to_owned(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn hyper_answers_become_json_with_their_status_and_date() {
        for (status, code) in [
            ("400 Bad Request", "bad_request"),
            ("414 URI Too Long", "uri_too_long"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let answer = hyper_answer(status);
            assert!(may_be_refusal(&answer));
            let (head, body) = split(&replacement(&answer).unwrap());
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{head}"
            );
            assert!(
                head.contains("content-type: application/json\r\n"),
                "{head}"
            );
            assert!(head.contains("connection: close\r\n"), "{head}");
            assert!(head.ends_with(&format!("date: {DATE}")), "{head}");
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["type"], "fastgate_error");
            assert!(body["error"]["message"].as_str().unwrap().len() > 10);
        }
    }

    #[test]
    fn anything_but_hyper_exact_answer_is_left_alone() {
        let exact = hyper_answer("400 Bad Request");
        // Another header, a body, another status, a cut answer, a longer date.
        let others = [
            b"HTTP/1.1 400 Bad Request\r\nx-request-id: r\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 27 Nov 2026 23:33:40 GMT\r\n\r\n".to_vec(),
            [exact.as_slice(), b"{}"].concat(),
            hyper_answer("404 Not Found"),
            hyper_answer("413 Payload Too Large"),
            exact[..exact.len() - 2].to_vec(),
            dated_answer("400 Bad Request", "Friday, 27 Nov 2026 23:33:40 GMT"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ];
        for other in others {
            assert!(
                replacement(&other).is_none(),
                "{}",
                String::from_utf8_lossy(&other)
            );
        }
        assert!(replacement(&exact).is_some());
        assert!(!may_be_refusal(b"HTTP/1.1 200 OK\r\n"));
        assert!(!may_be_refusal(&[b'a'; 200]));
    }
}

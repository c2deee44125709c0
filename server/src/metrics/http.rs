//! The endpoint's HTTP: just enough HTTP/1.1 for a scraper. One request per
//! connection (`Connection: close`), `GET /metrics` answered with the
//! metrics (OpenMetrics when the `Accept` header asks for it, as
//! Prometheus does, else the Prometheus text format), anything else with
//! 404 (another path), 405 (another method), 400 (not HTTP) or 431 (a head
//! over `REQUEST_BYTES_MAX`).
//!
//! Bounds: at most `CONNECTIONS_MAX` connections are served at once, each
//! on a thread of its own (more are answered 503 and closed); a request
//! head is at most `REQUEST_BYTES_MAX` bytes; the whole request must
//! arrive, and the answer leave, within `REQUEST_TIMEOUT` (a slow client
//! cannot hold a thread longer).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::{CONNECTIONS_MAX, REQUEST_BYTES_MAX, REQUEST_TIMEOUT, Sources};

/// The content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An answer: status line, content type and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn plain(status: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Accepts connections for the life of the process.
pub fn accept_loop(listener: TcpListener, sources: Sources) {
    let serving = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if serving.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
            serving.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
            let busy = Answer::plain(
                "503 Service Unavailable",
                format!("more than {CONNECTIONS_MAX} metrics connections at once\n"),
            );
            let _ = write_answer(&mut stream, &busy);
            continue;
        }
        let (sources, serving) = (sources.clone(), serving.clone());
        let spawned = std::thread::Builder::new()
            .name("hadron-metrics-conn".into())
            .spawn(move || {
                serve_connection(stream, &sources);
                serving.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a metrics connection thread: {e}");
        }
    }
}

fn serve_connection(mut stream: TcpStream, sources: &Sources) {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let answer = match read_head(&mut stream, deadline) {
        Ok(head) => answer(&head, || sources.scrape()),
        Err(answer) => answer,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if stream
        .set_write_timeout(Some(left.max(std::time::Duration::from_millis(1))))
        .is_ok()
    {
        let _ = write_answer(&mut stream, &answer);
    }
}

/// Reads the request head (up to the blank line) by `deadline`; an error
/// is the answer to give instead.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<String, Answer> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return String::from_utf8(head)
                .map_err(|_| Answer::plain("400 Bad Request", "the request is not UTF-8\n"));
        }
        if head.len() > REQUEST_BYTES_MAX {
            return Err(Answer::plain(
                "431 Request Header Fields Too Large",
                format!("a request head may be at most {REQUEST_BYTES_MAX} bytes\n"),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(timeout());
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(Answer::plain(
                    "400 Bad Request",
                    "the request ended early\n",
                ));
            }
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(timeout()),
        }
    }
}

fn timeout() -> Answer {
    Answer::plain(
        "408 Request Timeout",
        format!(
            "the request did not arrive within {} ms\n",
            REQUEST_TIMEOUT.as_millis()
        ),
    )
}

/// The answer to a request head; `scrape` gathers the figures.
pub fn answer(head: &str, scrape: impl FnOnce() -> Result<super::Scrape, String>) -> Answer {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::plain("400 Bad Request", "not an HTTP request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::plain("400 Bad Request", "only HTTP/1.x is served\n");
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return Answer::plain("404 Not Found", "only /metrics is served here\n");
    }
    if method != "GET" {
        return Answer::plain("405 Method Not Allowed", "only GET is served\n");
    }
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    let encoded = scrape().and_then(|s| super::openmetrics(s).map_err(|e| e.to_string()));
    match encoded {
        Err(why) => Answer::plain("503 Service Unavailable", format!("{why}\n")),
        Ok(body) if openmetrics => Answer {
            status: "200 OK",
            content_type: OPENMETRICS_CONTENT_TYPE,
            body,
        },
        Ok(body) => Answer {
            status: "200 OK",
            content_type: TEXT_CONTENT_TYPE,
            body: super::openmetrics_to_text(&body),
        },
    }
}

fn write_answer(stream: &mut TcpStream, answer: &Answer) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(answer.body.as_bytes())?;
    stream.flush()
}

//! A connection's opening exchange, for servers that want messages before they stream (and
//! the template of `--send-every`, which subscribe's workers send on their schedule):
//! `--send-on-open` messages go out once the connection is up, and `--await-reply` holds the
//! connection out of the measured phase until a reply containing the given text arrives (a
//! subscribe acknowledgement, say). Frames before that reply are not counted; frames after it
//! are the run's.
//!
//! Templates fill `{conn}`, `{user}`, `{token}`, `{seq}` (the message's number on this
//! connection, from 1), `{ts_ns}` (the send time, Unix nanoseconds) and `{uuid}` (a random
//! version 4 UUID).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use floodgate_wsclient::{client_frame, FrameReader, Kind};

/// What a connection sends and waits for before it is measured, and sends while it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Messages (templates) sent in order once connected.
    pub on_open: Vec<String>,
    /// Text (a template) a reply must contain before the connection counts as ready.
    pub await_reply: Option<String>,
    /// A message (template) each connection sends every `Duration` while it is measured
    /// (subscribe), the connections' first sends spread over one period.
    pub every: Option<(Duration, String)>,
}

/// What a template's fields are filled with for one connection.
#[derive(Clone)]
pub(crate) struct Vars<'a> {
    pub conn: usize,
    pub user: &'a str,
    pub token: Option<&'a str>,
}

impl Session {
    /// Whether there is anything to do before measuring.
    pub fn is_empty(&self) -> bool {
        self.on_open.is_empty() && self.await_reply.is_none()
    }

    /// Runs the exchange on a connection in blocking mode (each read bounded by the stream's
    /// read timeout), `early` being what came after the 101; gives up after `timeout`. Returns
    /// the bytes read past the awaited reply, which belong to the measured phase.
    pub(crate) fn open(
        &self,
        stream: &mut (impl Read + Write),
        early: Vec<u8>,
        vars: &Vars<'_>,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        for (i, m) in self.on_open.iter().enumerate() {
            let text = fill(m, vars, i as u64 + 1);
            stream
                .write_all(&client_frame(Kind::Text, text.as_bytes()))
                .map_err(|e| format!("sending --send-on-open message {}: {e}", i + 1))?;
        }
        stream.flush().map_err(|e| e.to_string())?;
        let Some(wanted) = &self.await_reply else {
            return Ok(early);
        };
        let wanted = fill(wanted, vars, 0);
        let mut reader = FrameReader::new(early, 16 << 10);
        let deadline = Instant::now() + timeout;
        let mut seen = 0usize;
        let mut last = String::new();
        loop {
            while let Some((kind, payload)) = reader.next_frame().map_err(|e| e.to_string())? {
                match kind {
                    Kind::Text | Kind::Binary => {
                        seen += 1;
                        let text = String::from_utf8_lossy(&payload);
                        if text.contains(wanted.as_str()) {
                            return Ok(reader.into_unread());
                        }
                        last = text.chars().take(200).collect();
                    }
                    Kind::Close => {
                        return Err(format!(
                            "the server closed before replying `{wanted}` ({seen} frames before)"
                        ))
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no reply containing `{wanted}` within {timeout:?} ({seen} frames; the last: {last})"
                ));
            }
            match reader.fill(stream) {
                Ok((0, _)) => {
                    return Err(format!(
                        "the server closed before replying `{wanted}` ({seen} frames before)"
                    ))
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Fills a template's fields.
pub(crate) fn fill(template: &str, v: &Vars<'_>, seq: u64) -> String {
    if !template.contains('{') {
        return template.to_owned();
    }
    let mut out = template
        .replace("{conn}", &v.conn.to_string())
        .replace("{user}", v.user)
        .replace("{seq}", &seq.to_string());
    if let Some(t) = v.token {
        out = out.replace("{token}", t);
    }
    if out.contains("{ts_ns}") {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        out = out.replace("{ts_ns}", &ns.to_string());
    }
    while out.contains("{uuid}") {
        out = out.replacen("{uuid}", &uuid_v4(), 1);
    }
    out
}

/// A random version 4 UUID.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_every_field() {
        let v = Vars {
            conn: 7,
            user: "u7",
            token: Some("t.k.n"),
        };
        let s = fill(
            r#"{"id":{seq},"c":{conn},"u":"{user}","t":"{token}","ts":{ts_ns},"a":"{uuid}","b":"{uuid}"}"#,
            &v,
            3,
        );
        let j: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!((j["id"].as_u64(), j["c"].as_u64()), (Some(3), Some(7)));
        assert_eq!(
            (j["u"].as_str(), j["t"].as_str()),
            (Some("u7"), Some("t.k.n"))
        );
        assert!(j["ts"].as_u64().unwrap() > 1_700_000_000_000_000_000);
        let (a, b) = (j["a"].as_str().unwrap(), j["b"].as_str().unwrap());
        assert_ne!(a, b, "each {{uuid}} is its own");
        assert_eq!((a.len(), &a[14..15]), (36, "4"));
        assert_eq!(fill("plain", &v, 1), "plain");
    }

    /// A server's side, scripted: what it sends (frames, unmasked) and what it was sent.
    struct Peer {
        to_client: io::Cursor<Vec<u8>>,
        from_client: Vec<u8>,
    }

    impl Read for Peer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.to_client.read(buf)
        }
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.from_client.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn server_text(s: &str) -> Vec<u8> {
        let mut f = vec![0x81, s.len() as u8];
        f.extend_from_slice(s.as_bytes());
        f
    }

    #[test]
    fn the_reply_awaited_ends_the_opening_and_what_follows_is_kept() {
        let s = Session {
            on_open: vec![r#"{"subscribe":"{user}"}"#.into()],
            await_reply: Some(r#""subscribed":"{user}""#.into()),
            every: None,
        };
        let v = Vars {
            conn: 0,
            user: "u0",
            token: None,
        };
        // A welcome, then the acknowledgement, then the first event: in the bytes after the
        // 101 and in the next read.
        let early = server_text(r#"{"welcome":1}"#);
        let mut rest = server_text(r#"{"subscribed":"u0"}"#);
        rest.extend(server_text(r#"{"seq":1}"#));
        let mut peer = Peer {
            to_client: io::Cursor::new(rest),
            from_client: Vec::new(),
        };
        let left = s
            .open(&mut peer, early, &v, Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            left,
            server_text(r#"{"seq":1}"#),
            "the event stays for the run"
        );
        // The subscribe went out as one masked text frame.
        assert_eq!(peer.from_client[0], 0x81);
        assert_eq!(
            usize::from(peer.from_client[1] & 0x7f),
            r#"{"subscribe":"u0"}"#.len()
        );

        // A server that never acknowledges: the error says what was awaited and what came.
        let mut peer = Peer {
            to_client: io::Cursor::new(server_text(r#"{"error":"no such channel"}"#)),
            from_client: Vec::new(),
        };
        let e = s
            .open(&mut peer, Vec::new(), &v, Duration::from_secs(1))
            .unwrap_err();
        assert!(
            e.contains("closed before replying") || e.contains("no such channel"),
            "{e}"
        );
    }
}

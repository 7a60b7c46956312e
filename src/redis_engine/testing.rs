//! What the Redis engine's unit tests share: a real `redis-server` (the same helper the
//! integration tests use) and a reader of a deployment's log.

use std::time::Duration;

/// A stream entry as XRANGE answers: its id and its fields.
pub(crate) type StreamEntry = (String, Vec<(String, Vec<u8>)>);

pub(crate) use super::server::RedisServer;

impl RedisServer {
    /// A new connection to it.
    pub(crate) fn connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }
}

/// Reads a deployment's log from its start, as every node's subscriber does: the batch
/// messages in the order the script wrote them. A cut connection is made again, and reading
/// goes on where it stopped.
pub(crate) struct LogReader {
    url: String,
    conn: Option<redis::Connection>,
    log: String,
    at: super::sequencer::LogId,
}

impl LogReader {
    /// A reader of the log of deployment `prefix` on `server`.
    pub(crate) fn new(server: &RedisServer, prefix: &str) -> LogReader {
        LogReader {
            url: server.url(),
            conn: None,
            log: format!("{prefix}:log"),
            at: Default::default(),
        }
    }

    /// The messages after those read so far, waiting up to `wait` for the first (none if it
    /// passes, or if the connection was cut: call again).
    pub(crate) fn read(&mut self, wait: Duration) -> Vec<Vec<u8>> {
        if self.conn.is_none() {
            let Ok(c) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
            else {
                std::thread::sleep(Duration::from_millis(10));
                return Vec::new();
            };
            self.conn = Some(c);
        }
        let reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.log)
            .arg(self.at.to_string())
            .query(self.conn.as_mut().expect("made above"));
        let Ok(reply) = reply else {
            self.conn = None;
            return Vec::new();
        };
        let entries = super::subscriber::entries(reply).expect("an XREAD reply");
        let mut out = Vec::new();
        for e in entries {
            self.at = e.id;
            out.extend(e.message);
        }
        out
    }
}

/// Retention for tests: `index_entries` per user, the log kept whole (1 GiB, an hour).
pub(crate) fn keep(index_entries: u64) -> super::sequencer::Retention {
    super::sequencer::Retention {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
        index_entries,
    }
}

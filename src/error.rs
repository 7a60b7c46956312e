//! Errors. Hot-path errors ([`EmitError`]) allocate nothing and hand the event back; edge errors
//! are gathered into [`Error`], each variant saying whether it is fatal.

use std::io;
use std::net::SocketAddr;

/// Why [`Emitter::emit`](crate::Emitter::emit) did not accept an event. The event is handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError<T> {
    /// The ring to the user's reactor shard is full: the reactor is behind. Nothing was queued.
    /// Retry later (for example after `crossbeam_utils::Backoff::snooze`), or shed the event.
    #[error("ring to the reactor is full; retry later")]
    Full(T),
    /// The gateway has shut down; the event was not accepted and never will be.
    #[error("the gateway has shut down")]
    Closed(T),
    /// The encoded event is larger than `max_event_bytes`.
    #[error("the encoded event is larger than max_event_bytes")]
    TooLarge(T),
    /// The user id is empty or longer than 255 bytes.
    #[error("the user id is empty or longer than 255 bytes")]
    InvalidUser(T),
    /// A custom event type name is empty, too long, has characters outside `[A-Za-z0-9_.:-]`,
    /// or is one of the protocol's own frame types (`hello`, `gap`, `redelivery`, `auth`,
    /// `error`).
    #[error("invalid event type name (1 to 64 bytes of [A-Za-z0-9_.:-], not a protocol frame type such as hello or gap)")]
    InvalidType(T),
    /// The event's data failed to serialize (its `Serialize` impl returned an error).
    #[error("the event's data failed to serialize")]
    Unserializable(T),
    /// [`emit_tracked`](crate::Emitter::emit_tracked) found every receipt slot held by a live
    /// [`Receipt`](crate::Receipt). Nothing was queued; drop receipts you are done with, or
    /// raise `receipt_capacity`.
    #[error("every receipt slot is in use")]
    NoReceipt(T),
}

impl<T> EmitError<T> {
    /// The event that was not accepted.
    pub fn into_inner(self) -> T {
        match self {
            EmitError::Full(t)
            | EmitError::Closed(t)
            | EmitError::TooLarge(t)
            | EmitError::InvalidUser(t)
            | EmitError::InvalidType(t)
            | EmitError::Unserializable(t)
            | EmitError::NoReceipt(t) => t,
        }
    }

    /// True for [`EmitError::Full`] and [`EmitError::NoReceipt`]: the same event may succeed
    /// later. Every other variant will fail again for the same event.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// Which error this is, without the event.
    pub fn kind(&self) -> EmitErrorKind {
        match self {
            EmitError::Full(_) => EmitErrorKind::Full,
            EmitError::Closed(_) => EmitErrorKind::Closed,
            EmitError::TooLarge(_) => EmitErrorKind::TooLarge,
            EmitError::InvalidUser(_) => EmitErrorKind::InvalidUser,
            EmitError::InvalidType(_) => EmitErrorKind::InvalidType,
            EmitError::Unserializable(_) => EmitErrorKind::Unserializable,
            EmitError::NoReceipt(_) => EmitErrorKind::NoReceipt,
        }
    }
}

/// An [`EmitError`] without its event: what `?` carries into [`Error::Emit`] from a function
/// that does not want the event back. (Where you do, match on the `EmitError` or call
/// [`EmitError::into_inner`] first.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum EmitErrorKind {
    /// See [`EmitError::Full`].
    #[error("ring to the reactor is full; retry later")]
    Full,
    /// See [`EmitError::Closed`].
    #[error("the gateway has shut down")]
    Closed,
    /// See [`EmitError::TooLarge`].
    #[error("the encoded event is larger than max_event_bytes")]
    TooLarge,
    /// See [`EmitError::InvalidUser`].
    #[error("the user id is empty or longer than 255 bytes")]
    InvalidUser,
    /// See [`EmitError::InvalidType`].
    #[error("invalid event type name (1 to 64 bytes of [A-Za-z0-9_.:-], not a protocol frame type such as hello or gap)")]
    InvalidType,
    /// See [`EmitError::Unserializable`].
    #[error("the event's data failed to serialize")]
    Unserializable,
    /// See [`EmitError::NoReceipt`].
    #[error("every receipt slot is in use")]
    NoReceipt,
}

impl EmitErrorKind {
    /// True for [`Full`](Self::Full) and [`NoReceipt`](Self::NoReceipt): the same event may
    /// succeed later.
    pub fn is_retryable(self) -> bool {
        matches!(self, EmitErrorKind::Full | EmitErrorKind::NoReceipt)
    }
}

/// `?` on an emit in a function returning [`Error`]: the event is dropped, its kind kept.
impl<T> From<EmitError<T>> for Error {
    fn from(e: EmitError<T>) -> Error {
        Error::Emit(e.kind())
    }
}

/// An invalid or conflicting setting. `setting` names it exactly as the builder method, the
/// config file key and the `serve` flag (with `-` for `_`) do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    /// The setting at fault (for a conflict, the one to change).
    pub setting: &'static str,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }
}

/// Every error outside the per-event path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid or conflicts with another. Fatal: fix the configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listening socket could not be bound. Fatal.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A JWT key could not be read or parsed. Fatal.
    #[error("JWT key `{path}`: {reason}")]
    Key {
        /// The key file (or `<secret>`).
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A reactor thread panicked. Fatal for the gateway; the message is the panic payload.
    #[error("reactor thread panicked: {0}")]
    ReactorPanicked(String),
    /// Any other I/O error at the edge (creating the poller, spawning threads). Fatal.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The spool could not be opened or recovered (unreadable, corrupted, or written with
    /// another shard count). Fatal: the message says what to change.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// An event was not accepted (from `?` on [`EmitError`], which keeps the event; this keeps
    /// only why). Fatal unless [`EmitErrorKind::is_retryable`]: the same event may succeed
    /// later when the ring is full or a receipt slot is free again.
    #[error("event not accepted: {0}")]
    Emit(EmitErrorKind),
    /// Reading or parsing a configuration file failed. Fatal.
    #[error("config file `{path}`: {reason}")]
    ConfigFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    /// Whether the operation that returned this error can never succeed as configured (or,
    /// for [`Error::Emit`], the same event never will). Only an emit that found the ring full
    /// or no receipt slot free is not fatal.
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::Emit(kind) => !kind.is_retryable(),
            Error::Config(_)
            | Error::Bind { .. }
            | Error::Key { .. }
            | Error::ReactorPanicked(_)
            | Error::Io(_)
            | Error::Spool(_)
            | Error::ConfigFile { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_errors_hand_the_value_back() {
        let e = EmitError::Full(5u32);
        assert!(e.is_retryable());
        assert_eq!(e.into_inner(), 5);
        assert!(!EmitError::Closed(1).is_retryable());
        assert_eq!(EmitError::TooLarge("x").into_inner(), "x");
    }

    #[test]
    fn question_mark_carries_an_emit_error_into_error_without_the_event() {
        fn emit_twice(first: Result<(), EmitError<String>>) -> Result<u32, Error> {
            first?;
            Ok(2)
        }
        assert_eq!(emit_twice(Ok(())).unwrap(), 2);
        let e = emit_twice(Err(EmitError::Full("ev".into()))).unwrap_err();
        assert!(matches!(e, Error::Emit(EmitErrorKind::Full)));
        assert!(!e.is_fatal(), "a full ring is worth retrying");
        assert_eq!(
            e.to_string(),
            "event not accepted: ring to the reactor is full; retry later"
        );
        let e = emit_twice(Err(EmitError::InvalidUser(String::new()))).unwrap_err();
        assert!(e.is_fatal(), "that event will never be accepted");
    }

    #[test]
    fn config_error_names_the_setting() {
        let e: Error = ConfigError::new("max_batch_events", "must be at least 1").into();
        assert!(e.is_fatal());
        assert_eq!(
            e.to_string(),
            "invalid setting `max_batch_events`: must be at least 1"
        );
    }
}

//! The HTTP/1.1 side of a connection, before any upgrade: parsing the request head, deciding
//! what to answer, and building responses. Pure functions over bytes; the reactor owns the
//! socket and only carries out the [`Decision`].

use super::conn::{ConnKind, Cursor, Start};

/// Which endpoint a handed-over connection asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /api/publish`.
    Publish,
    /// `GET /api/ingest` with a WebSocket upgrade (the key is the upgrade's
    /// `Sec-WebSocket-Key`).
    Socket,
}

/// The outcome of checking a request's API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// Ingest is off (no `ingest_api_key`).
    Disabled,
    /// The bearer token is the key.
    Valid,
    /// Missing or wrong.
    Invalid,
}

/// The largest request head accepted; past it the client gets 431.
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// What the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/ws`: the authenticated event stream.
    Events,
    /// `/echo`: the conformance echo endpoint.
    Echo,
    /// `/healthz`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `/dashboard`: the live dashboard's page.
    Dashboard,
    /// `/dashboard/stats`: the numbers the dashboard shows, as JSON.
    DashboardStats,
    /// `/api/publish`: a batch of events from another process (POST).
    Publish,
    /// `/api/ingest`: a WebSocket of batches from another process.
    Ingest,
    /// `/api/disconnect`: close every connection of a user (POST, the ingest key).
    Disconnect,
    /// Anything else.
    NotFound,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub route: Route,
    pub is_get: bool,
    pub is_post: bool,
    /// The `Authorization: Bearer` value alone (the ingest API key; never from the query).
    pub bearer: Option<String>,
    /// `Sec-WebSocket-Key`, when the request is a valid WebSocket upgrade (RFC 6455 4.2.1).
    pub upgrade_key: Option<String>,
    /// The request asked to upgrade but a version other than 13.
    pub bad_version: bool,
    /// The bearer token from `Authorization: Bearer` or the `token` query parameter.
    pub token: Option<String>,
    /// The `Origin` header (browsers send it on every WebSocket handshake).
    pub origin: Option<String>,
    /// How the stream starts, from the `since`, `epoch` and `resume` query parameters, or why
    /// they are invalid.
    pub start: Result<Start, &'static str>,
    /// Bytes of the head, including the final blank line; anything after is the client's first
    /// WebSocket bytes.
    pub head_len: usize,
}

/// Why a request head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not HTTP/1.1 syntax, or too many headers.
    Malformed,
    /// Longer than [`MAX_HEAD_BYTES`].
    TooLarge,
}

/// Parses the head at the start of `buf`. `Ok(None)` means more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let route = match path {
        "/ws" => Route::Events,
        "/echo" => Route::Echo,
        "/healthz" => Route::Health,
        "/metrics" => Route::Metrics,
        "/dashboard" => Route::Dashboard,
        "/dashboard/stats" => Route::DashboardStats,
        "/api/publish" => Route::Publish,
        "/api/ingest" => Route::Ingest,
        "/api/disconnect" => Route::Disconnect,
        _ => Route::NotFound,
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let is_get = req.method == Some("GET");
    let wants_upgrade = has_token("upgrade", "websocket") && has_token("connection", "upgrade");
    let version_ok = header("sec-websocket-version") == Some("13");
    let key = header("sec-websocket-key").filter(|k| k.len() == 24 && k.ends_with("=="));
    let upgrade_key = (is_get && wants_upgrade && version_ok && req.version == Some(1))
        .then(|| key.map(str::to_owned))
        .flatten();
    let bearer = header("authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned())
    });
    let query_token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_owned);
    Ok(Some(Request {
        route,
        is_get,
        is_post: req.method == Some("POST"),
        bearer: bearer.clone(),
        upgrade_key,
        bad_version: wants_upgrade && !version_ok,
        token: bearer.or(query_token).filter(|t| !t.is_empty()),
        origin: header("origin").map(str::to_owned),
        start: parse_start(query),
        head_len,
    }))
}

/// Reads `since=<seq>` and `epoch=<hex>`, or `resume=message`, from a query string.
fn parse_start(query: &str) -> Result<Start, &'static str> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let since = param("since")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| "`since` must be the last seq received, an unsigned integer")
        })
        .transpose()?;
    let epoch = param("epoch").map(parse_epoch).transpose()?;
    match (param("resume"), cursor(since, epoch)?) {
        (None, None) => Ok(Start::Live),
        (None, Some(c)) => Ok(Start::Resume(c)),
        (Some("message"), None) => Ok(Start::AwaitCursor),
        (Some("message"), Some(_)) => {
            Err("give the cursor either as `since`/`epoch` or as a first message (`resume=message`), not both")
        }
        (Some(_), _) => Err("`resume` must be `message` (the cursor comes as the first message)"),
    }
}

fn parse_epoch(v: &str) -> Result<u64, &'static str> {
    (!v.is_empty() && v.len() <= 16)
        .then(|| u64::from_str_radix(v, 16).ok())
        .flatten()
        .ok_or("`epoch` must be the hex epoch from a hello or gap frame")
}

/// The cursor rules shared by the query and the first message.
fn cursor(since: Option<u64>, epoch: Option<u64>) -> Result<Option<Cursor>, &'static str> {
    match (since, epoch) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err("`epoch` needs `since`"),
        (Some(s), None) if s > 0 => Err("`since` needs `epoch` (from the hello frame)"),
        (Some(since), epoch) => Ok(Some(Cursor { since, epoch })),
    }
}

/// Parses the first message of a `resume=message` connection: `{"since":N,"epoch":"<hex>"}`
/// (`{"since":0}` for everything retained), with the same rules as the query parameters.
pub(crate) fn parse_cursor_message(text: &[u8]) -> Result<Cursor, &'static str> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Msg<'a> {
        since: u64,
        #[serde(borrow)]
        epoch: Option<&'a str>,
    }
    let m: Msg<'_> = serde_json::from_slice(text)
        .map_err(|_| "the first message must be {\"since\":<seq>,\"epoch\":\"<hex>\"}")?;
    let epoch = m.epoch.map(parse_epoch).transpose()?;
    Ok(cursor(Some(m.since), epoch)?.expect("since is set"))
}

/// Why a request was refused, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Malformed, wrong method or path, not an upgrade, or too slow.
    BadRequest,
    /// Missing or invalid token.
    Auth,
    /// A browser's `Origin` not in `allowed_origins`.
    Origin,
}

/// What to do with a complete request head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send this response and close; count it under `refused` if set.
    Respond {
        response: Vec<u8>,
        refused: Option<Refusal>,
    },
    /// Send the Prometheus metrics (rendered by the caller, which can see every shard) and close.
    Metrics,
    /// Answer `/healthz` (the caller knows whether the node reaches what it depends on).
    Health,
    /// Send the dashboard's page (`stats: false`) or its numbers as JSON (`stats: true`),
    /// rendered by the caller, and close.
    Dashboard { stats: bool },
    /// Hand the connection, with its request, to the ingest endpoints (the key is valid).
    Ingest(Endpoint),
    /// Upgrade: a connection of `kind`, answered with `response` (the 101), whose stream
    /// starts as `start` says.
    Upgrade {
        kind: ConnKind,
        response: Vec<u8>,
        start: Start,
    },
}

/// Which browser origins may open WebSockets (`allowed_origins`): exact origins
/// (`https://app.example.com`) and patterns whose host starts with `*.`
/// (`https://*.example.com`, any subdomain, not the bare domain). Empty: every origin. A
/// handshake without an `Origin` header (not from a browser) is always let through: the header
/// guards browsers against cross-site use, the token guards everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OriginPolicy {
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// A policy of these entries, each `scheme://host[:port]` with an optional `*.` before
    /// the host; an entry otherwise shaped is refused with the reason.
    pub(crate) fn new(entries: &[String]) -> Result<OriginPolicy, String> {
        let mut allowed = Vec::with_capacity(entries.len());
        for e in entries {
            let e = e.trim().trim_end_matches('/').to_ascii_lowercase();
            let (scheme, host) = e
                .split_once("://")
                .ok_or_else(|| format!("`{e}` is not an origin like https://app.example.com"))?;
            let host_ok = |h: &str| {
                !h.is_empty()
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    })
            };
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if scheme.is_empty() || !host_ok(bare) {
                return Err(format!(
                    "`{e}` is not an origin like https://app.example.com or https://*.example.com"
                ));
            }
            allowed.push(e);
        }
        Ok(OriginPolicy { allowed })
    }

    /// Whether a handshake with this `Origin` header may proceed.
    pub(crate) fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.allowed.is_empty() {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        self.allowed.iter().any(|a| match a.split_once("://*.") {
            None => *a == origin,
            Some((scheme, domain)) => origin
                .strip_prefix(scheme)
                .and_then(|o| o.strip_prefix("://"))
                .and_then(|host| host.strip_suffix(domain))
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        })
    }
}

/// The endpoints that are off unless a setting turns them on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Optional {
    /// `/echo` (the `echo` setting).
    pub echo: bool,
    /// `/dashboard` and `/dashboard/stats` (the `dashboard` setting).
    pub dashboard: bool,
}

/// Decides the answer to `req`. `optional` says which optional endpoints are on; `verify`
/// checks a token and returns its user id or a reason safe to show the client; `ingest_key`
/// checks the ingest API key.
pub(crate) fn decide(
    req: &Request,
    optional: Optional,
    origins: &OriginPolicy,
    verify: impl FnOnce(Option<&str>) -> Result<Box<[u8]>, &'static str>,
    ingest_key: impl FnOnce(Option<&str>) -> KeyCheck,
) -> Decision {
    let refuse = |response, refused| Decision::Respond {
        response,
        refused: Some(refused),
    };
    if matches!(
        req.route,
        Route::Publish | Route::Ingest | Route::Disconnect
    ) {
        return decide_ingest(req, ingest_key);
    }
    if !req.is_get {
        let resp = response(
            405,
            "Method Not Allowed",
            "Allow: GET\r\n",
            "text/plain",
            "only GET\n",
        );
        return refuse(resp, Refusal::BadRequest);
    }
    match req.route {
        Route::Health => return Decision::Health,
        Route::Metrics => return Decision::Metrics,
        Route::Dashboard | Route::DashboardStats if optional.dashboard => {
            return Decision::Dashboard {
                stats: req.route == Route::DashboardStats,
            }
        }
        Route::Dashboard | Route::DashboardStats => {
            return refuse(
                error(
                    404,
                    "Not Found",
                    "dashboard disabled (it is on with the dashboard setting)\n",
                ),
                Refusal::BadRequest,
            )
        }
        Route::NotFound | Route::Publish | Route::Ingest | Route::Disconnect => {
            return refuse(error(404, "Not Found", "not found\n"), Refusal::BadRequest)
        }
        Route::Echo if !optional.echo => {
            return refuse(
                error(404, "Not Found", "echo endpoint disabled\n"),
                Refusal::BadRequest,
            )
        }
        Route::Echo | Route::Events => {}
    }
    let Some(key) = req.upgrade_key.as_deref() else {
        let resp = if req.bad_version {
            let hdr = "Sec-WebSocket-Version: 13\r\n";
            response(
                426,
                "Upgrade Required",
                hdr,
                "text/plain",
                "WebSocket version 13 only\n",
            )
        } else {
            let hdr = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
            response(
                426,
                "Upgrade Required",
                hdr,
                "text/plain",
                "WebSocket upgrade required\n",
            )
        };
        return refuse(resp, Refusal::BadRequest);
    };
    if !origins.allows(req.origin.as_deref()) {
        let body = "this Origin may not open WebSockets here (allowed_origins)\n";
        return refuse(error(403, "Forbidden", body), Refusal::Origin);
    }
    let (kind, start) = if req.route == Route::Echo {
        (ConnKind::Echo, Start::Live)
    } else {
        let user = match verify(req.token.as_deref()) {
            Ok(user) => user,
            Err(why) => return refuse(unauthorized(why), Refusal::Auth),
        };
        match req.start {
            Ok(start) => (ConnKind::User(user), start),
            Err(why) => {
                let body = format!("{why}\n");
                return refuse(error(400, "Bad Request", &body), Refusal::BadRequest);
            }
        }
    };
    Decision::Upgrade {
        kind,
        response: switching_protocols(key),
        start,
    }
}

/// The ingest endpoints: the method, the upgrade for `/api/ingest`, then the API key.
fn decide_ingest(req: &Request, ingest_key: impl FnOnce(Option<&str>) -> KeyCheck) -> Decision {
    let refuse = |response, refused| Decision::Respond {
        response,
        refused: Some(refused),
    };
    let endpoint = if matches!(req.route, Route::Publish | Route::Disconnect) {
        if !req.is_post {
            let resp = response(
                405,
                "Method Not Allowed",
                "Allow: POST\r\n",
                "text/plain",
                "POST a JSON array of events\n",
            );
            return refuse(resp, Refusal::BadRequest);
        }
        Endpoint::Publish
    } else {
        if req.upgrade_key.is_none() {
            let hdr = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
            let resp = response(
                426,
                "Upgrade Required",
                hdr,
                "text/plain",
                "/api/ingest is a WebSocket endpoint\n",
            );
            return refuse(resp, Refusal::BadRequest);
        }
        Endpoint::Socket
    };
    match ingest_key(req.bearer.as_deref()) {
        KeyCheck::Valid => Decision::Ingest(endpoint),
        KeyCheck::Disabled => refuse(
            error(
                404,
                "Not Found",
                "ingest is disabled (no ingest_api_key configured)\n",
            ),
            Refusal::BadRequest,
        ),
        KeyCheck::Invalid => refuse(
            response(
                401,
                "Unauthorized",
                "WWW-Authenticate: Bearer realm=\"ingest\"\r\n",
                "text/plain",
                "unauthorized: missing or wrong API key (Authorization: Bearer <ingest_api_key>)\n",
            ),
            Refusal::Auth,
        ),
    }
}

/// The response to a request head that could not be parsed.
pub(crate) fn head_error(e: HeadError) -> Vec<u8> {
    match e {
        HeadError::TooLarge => error(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        HeadError::Malformed => error(400, "Bad Request", "malformed request\n"),
    }
}

/// `101 Switching Protocols` for a valid upgrade request with `key`.
pub(crate) fn switching_protocols(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A complete response that ends the connection.
pub(crate) fn response(
    status: u16,
    reason: &str,
    extra_headers: &str,
    content_type: &str,
    body: &str,
) -> Vec<u8> {
    response_on(
        status,
        reason,
        extra_headers,
        content_type,
        body.as_bytes(),
        false,
    )
}

/// A complete response; with `keep_alive` the connection stays open for the next request
/// (the ingest endpoint's keep-alive `POST`s), otherwise it ends.
pub(crate) fn response_on(
    status: u16,
    reason: &str,
    extra_headers: &str,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// `401 Unauthorized` with an RFC 6750 challenge; `why` is safe to show (it names the token
/// problem, never the key).
pub(crate) fn unauthorized(why: &str) -> Vec<u8> {
    let header = format!(
        "WWW-Authenticate: Bearer error=\"invalid_token\", error_description=\"{why}\"\r\n"
    );
    response(
        401,
        "Unauthorized",
        &header,
        "text/plain",
        &format!("unauthorized: {why}\n"),
    )
}

/// A plain-text error response.
pub(crate) fn error(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(status, reason, "", "text/plain", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws?token=abc.def.ghi HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn the_start_comes_from_since_and_epoch_or_resume_message() {
        let c = |since, epoch| Start::Resume(Cursor { since, epoch });
        assert_eq!(parse_start(""), Ok(Start::Live));
        assert_eq!(parse_start("token=x"), Ok(Start::Live));
        assert_eq!(parse_start("since=0"), Ok(c(0, None)));
        assert_eq!(parse_start("since=7&epoch=ff"), Ok(c(7, Some(255))));
        assert_eq!(parse_start("resume=message"), Ok(Start::AwaitCursor));
        for bad in [
            "since=7",
            "epoch=ff",
            "since=x&epoch=1",
            "since=1&epoch=zz",
            "since=1&epoch=12345678901234567",
            "resume=message&since=0",
            "resume=query",
        ] {
            assert!(parse_start(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cursor_message_follows_the_query_rules() {
        let c = |since, epoch| Cursor { since, epoch };
        assert_eq!(parse_cursor_message(br#"{"since":0}"#), Ok(c(0, None)));
        assert_eq!(
            parse_cursor_message(br#"{"since":9,"epoch":"0a"}"#),
            Ok(c(9, Some(10)))
        );
        for bad in [
            &br#"{"since":9}"#[..],
            br#"{"since":-1,"epoch":"0a"}"#,
            br#"{"since":1,"epoch":"nothex"}"#,
            br#"{"ack":3}"#,
            br#"{"since":1,"epoch":"0a","extra":1}"#,
            b"not json",
        ] {
            assert!(
                parse_cursor_message(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parses_an_upgrade_with_query_token() {
        let req = parse(UPGRADE.as_bytes()).unwrap().unwrap();
        assert_eq!(req.route, Route::Events);
        assert_eq!(req.upgrade_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(req.token.as_deref(), Some("abc.def.ghi"));
        assert_eq!(req.head_len, UPGRADE.len());
    }

    #[test]
    fn bearer_header_wins_over_query() {
        let text = UPGRADE.replace(
            "Host: x\r\n",
            "Host: x\r\nAuthorization: Bearer hdr.tok.en\r\n",
        );
        let req = parse(text.as_bytes()).unwrap().unwrap();
        assert_eq!(req.token.as_deref(), Some("hdr.tok.en"));
    }

    #[test]
    fn partial_heads_wait_and_oversized_heads_fail() {
        assert_eq!(parse(&UPGRADE.as_bytes()[..30]), Ok(None));
        let mut big = b"GET /ws HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(parse(&big), Err(HeadError::TooLarge));
        assert_eq!(
            parse(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn non_upgrades_and_wrong_versions_have_no_key() {
        let req = parse(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.route, Route::Health);
        assert!(req.upgrade_key.is_none());
        let v8 = UPGRADE.replace("Version: 13", "Version: 8");
        let req = parse(v8.as_bytes()).unwrap().unwrap();
        assert!(req.upgrade_key.is_none());
        assert!(req.bad_version);
    }

    /// The decision for `raw` as text; `on` turns every optional endpoint on.
    fn decide_text(raw: &str, on: bool) -> (String, Option<Refusal>) {
        let req = parse(raw.as_bytes()).unwrap().unwrap();
        let verify = |t: Option<&str>| match t {
            Some("good") => Ok(Box::<[u8]>::from(&b"alice"[..])),
            Some(_) => Err("bad signature"),
            None => Err("missing token"),
        };
        let key = |k: Option<&str>| match k {
            Some("the-ingest-key") => KeyCheck::Valid,
            _ => KeyCheck::Invalid,
        };
        let optional = Optional {
            echo: on,
            dashboard: on,
        };
        match decide(&req, optional, &OriginPolicy::default(), verify, key) {
            Decision::Respond { response, refused } => {
                (String::from_utf8(response).unwrap(), refused)
            }
            Decision::Metrics => ("metrics".into(), None),
            Decision::Health => ("health".into(), None),
            Decision::Dashboard { stats } => (format!("dashboard stats={stats}"), None),
            Decision::Ingest(e) => (format!("ingest {e:?}"), None),
            Decision::Upgrade { kind, response, .. } => {
                assert!(response.starts_with(b"HTTP/1.1 101"));
                (format!("upgrade {kind:?}"), None)
            }
        }
    }

    #[test]
    fn decisions_for_each_route() {
        let up = |path: &str, extra: &str| {
            UPGRADE
                .replace("/ws?token=abc.def.ghi", path)
                .replace("Host: x\r\n", &format!("Host: x\r\n{extra}"))
        };
        let (r, _) = decide_text(&up("/ws", "Authorization: Bearer good\r\n"), false);
        assert_eq!(
            r,
            format!("upgrade {:?}", ConnKind::User(Box::from(&b"alice"[..])))
        );
        let (r, why) = decide_text(&up("/ws", "Authorization: Bearer forged\r\n"), false);
        assert!(
            r.starts_with("HTTP/1.1 401") && r.contains("bad signature"),
            "{r}"
        );
        assert_eq!(why, Some(Refusal::Auth));
        let (r, why) = decide_text(&up("/ws", ""), false);
        assert!(r.contains("missing token") && why == Some(Refusal::Auth));
        assert!(decide_text(&up("/echo", ""), false)
            .0
            .starts_with("HTTP/1.1 404"));
        assert_eq!(decide_text(&up("/echo", ""), true).0, "upgrade Echo");
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\n\r\n");
        for path in ["/dashboard", "/dashboard/stats", "/dashboard?x=1"] {
            let (off, why) = decide_text(&get(path), false);
            assert!(off.starts_with("HTTP/1.1 404"), "{off}");
            assert!(off.contains("dashboard setting"), "{off}");
            assert_eq!(why, Some(Refusal::BadRequest));
        }
        assert_eq!(
            decide_text(&get("/dashboard"), true).0,
            "dashboard stats=false"
        );
        assert_eq!(
            decide_text(&get("/dashboard/stats?t=9"), true).0,
            "dashboard stats=true"
        );
        assert!(decide_text("POST /dashboard HTTP/1.1\r\n\r\n", true)
            .0
            .starts_with("HTTP/1.1 405"));
        assert!(decide_text(&get("/dashboard/x"), true)
            .0
            .starts_with("HTTP/1.1 404"));
        assert_eq!(
            decide_text("GET /metrics HTTP/1.1\r\n\r\n", false).0,
            "metrics"
        );
        assert_eq!(
            decide_text("GET /healthz HTTP/1.1\r\n\r\n", false),
            ("health".into(), None)
        );
        assert!(decide_text("GET /ws HTTP/1.1\r\n\r\n", false)
            .0
            .starts_with("HTTP/1.1 426"));
        assert!(decide_text("POST /ws HTTP/1.1\r\n\r\n", false)
            .0
            .starts_with("HTTP/1.1 405"));
        assert!(decide_text("GET /x HTTP/1.1\r\n\r\n", false)
            .0
            .starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn ingest_routes_need_their_method_and_the_key() {
        let post = |extra: &str| {
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 2\r\n\r\n[]")
        };
        assert_eq!(
            decide_text(&post("Authorization: Bearer the-ingest-key\r\n"), false).0,
            "ingest Publish"
        );
        let (r, why) = decide_text(&post("Authorization: Bearer nope\r\n"), false);
        assert!(
            r.starts_with("HTTP/1.1 401") && why == Some(Refusal::Auth),
            "{r}"
        );
        // The key never comes from the query string (it would end up in access logs).
        let (r, _) = decide_text(
            "POST /api/publish?token=the-ingest-key HTTP/1.1\r\n\r\n",
            false,
        );
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert!(decide_text("GET /api/publish HTTP/1.1\r\n\r\n", false)
            .0
            .starts_with("HTTP/1.1 405"));
        let up = UPGRADE
            .replace("/ws?token=abc.def.ghi", "/api/ingest")
            .replace(
                "Host: x\r\n",
                "Host: x\r\nAuthorization: Bearer the-ingest-key\r\n",
            );
        assert_eq!(decide_text(&up, false).0, "ingest Socket");
        assert!(decide_text(
            "GET /api/ingest HTTP/1.1\r\nAuthorization: Bearer the-ingest-key\r\n\r\n",
            false
        )
        .0
        .starts_with("HTTP/1.1 426"));
        let req = parse(post("").as_bytes()).unwrap().unwrap();
        let off = decide(
            &req,
            Optional::default(),
            &OriginPolicy::default(),
            |_| Err("x"),
            |_| KeyCheck::Disabled,
        );
        assert!(
            matches!(&off, Decision::Respond { response, .. } if response.starts_with(b"HTTP/1.1 404")),
            "{off:?}"
        );
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let resp = String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains_of_a_pattern() {
        let p = OriginPolicy::new(&[
            "https://app.example.com".into(),
            "https://*.example.org/".into(),
        ])
        .unwrap();
        assert!(p.allows(Some("https://app.example.com")));
        assert!(p.allows(Some("HTTPS://APP.EXAMPLE.COM")));
        assert!(p.allows(Some("https://a.b.example.org")));
        assert!(p.allows(None), "not a browser");
        for bad in [
            "https://evil.com",
            "http://app.example.com",
            "https://app.example.com.evil.com",
            "https://example.org",
            "https://evilexample.org",
            "https://app.example.com:8443",
            "null",
        ] {
            assert!(!p.allows(Some(bad)), "{bad}");
        }
        assert!(OriginPolicy::default().allows(Some("https://anything")));
        assert!(OriginPolicy::new(&["example.com".into()]).is_err());
        assert!(OriginPolicy::new(&["https://exa mple.com".into()]).is_err());
    }

    #[test]
    fn a_browser_from_another_origin_gets_403() {
        let p = OriginPolicy::new(&["https://app.example.com".into()]).unwrap();
        let head = UPGRADE.replace("Host: x\r\n", "Host: x\r\nOrigin: https://evil.com\r\n");
        let req = parse(head.as_bytes()).unwrap().unwrap();
        let d = decide(
            &req,
            Optional::default(),
            &p,
            |_| Ok(b"u"[..].into()),
            |_| KeyCheck::Disabled,
        );
        match d {
            Decision::Respond { response, refused } => {
                assert!(response.starts_with(b"HTTP/1.1 403"));
                assert_eq!(refused, Some(Refusal::Origin));
            }
            other => panic!("{other:?}"),
        }
        let ok = UPGRADE.replace(
            "Host: x\r\n",
            "Host: x\r\nOrigin: https://app.example.com\r\n",
        );
        let req = parse(ok.as_bytes()).unwrap().unwrap();
        let d = decide(
            &req,
            Optional::default(),
            &p,
            |_| Ok(b"u"[..].into()),
            |_| KeyCheck::Disabled,
        );
        assert!(matches!(d, Decision::Upgrade { .. }));
    }
}

//! Where load connections go and how they are opened: URL templates, tokens, source addresses,
//! and the preflight that checks the machine can hold them.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A `ws://host:port/path?query` URL whose path and query may hold `{conn}` (the connection
/// index), `{user}` (its user) and `{token}` (its token).
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    /// `wss://`: connections speak TLS.
    pub tls: bool,
    /// The host alone (a name or an IP address): TLS checks the certificate against it.
    pub server_name: String,
    /// `host:port` as written, for the `Host` header.
    pub host: String,
    /// Where it resolves to.
    pub addr: SocketAddr,
    /// The request target template (`/path?query`).
    pub target: String,
}

impl UrlTemplate {
    /// Parses `ws://` or `wss://` URL with optional `{conn}` and `{user}` placeholders.
    pub fn parse(url: &str) -> Result<UrlTemplate, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else {
            return Err(format!("`{url}` is not a ws:// or wss:// URL"));
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let target = if target.starts_with('?') {
            format!("/{target}")
        } else {
            target
        };
        if authority.contains('{') {
            return Err(
                "`{conn}` and `{user}` may appear in the path and query, not the host".into(),
            );
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let server_name = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => authority,
        }
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{authority}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{authority}` resolves to no address"))?;
        Ok(UrlTemplate {
            tls,
            server_name,
            host: authority.to_owned(),
            addr,
            target,
        })
    }

    /// The request target for connection `conn` of user `user` with `token`.
    pub fn target_for(&self, conn: usize, user: &str, token: Option<&str>) -> String {
        let mut t = self
            .target
            .replace("{conn}", &conn.to_string())
            .replace("{user}", user);
        if let Some(tok) = token {
            t = t.replace("{token}", tok);
        }
        t
    }

    /// Whether the token goes in the URL (`{token}`) rather than an `Authorization` header.
    pub fn has_token_slot(&self) -> bool {
        self.target.contains("{token}")
    }
}

/// Where each connection's token comes from.
#[derive(Debug, Clone)]
pub enum Tokens {
    /// No token: connections send none.
    None,
    /// Minted per connection: HS256 with this secret, `sub` = the connection's user.
    Mint {
        /// The shared HS256 secret.
        secret: Vec<u8>,
        /// How long each token is valid.
        ttl: Duration,
    },
    /// One per line; connection `i` takes line `i % lines`.
    List(Vec<String>),
}

impl Tokens {
    /// Reads one token per line from `path` (blank lines skipped).
    pub fn from_file(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("token file `{}`: {e}", path.display()))?;
        let list: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if list.is_empty() {
            return Err(format!("token file `{}` has no tokens", path.display()));
        }
        Ok(Tokens::List(list))
    }

    /// The token for connection `conn` of `user`.
    pub fn for_conn(&self, conn: usize, user: &str) -> Result<Option<String>, String> {
        match self {
            Tokens::None => Ok(None),
            Tokens::Mint { secret, ttl } => mint(secret, user, *ttl).map(Some),
            Tokens::List(l) => Ok(Some(l[conn % l.len()].clone())),
        }
    }
}

/// An HS256 token for `user` (`sub`), valid from now for `ttl`: what a server that shares
/// `secret` accepts, floodgate's `/ws` among them.
fn mint(secret: &[u8], user: &str, ttl: Duration) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
    }
    let iat = crate::unix_ns() / 1_000_000_000;
    let claims = Claims {
        sub: user,
        iat,
        exp: iat + ttl.as_secs(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| format!("cannot mint a token: {e}"))
}

/// Source addresses to spread connections over (connection `i` uses `i % n`), each with its
/// own ephemeral port range.
#[derive(Debug, Clone, Default)]
pub struct Sources(pub Vec<IpAddr>);

impl Sources {
    /// Parses `127.0.0.2,127.0.0.3` or a range `127.0.0.1-127.0.0.8`.
    pub fn parse(text: &str) -> Result<Sources, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((a, b)) = part.split_once('-') {
                let a: std::net::Ipv4Addr = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
                let b: std::net::Ipv4Addr = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{b}` is not an IPv4 address"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 255 {
                    return Err(format!(
                        "range `{part}` must go up, by at most 256 addresses"
                    ));
                }
                out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
            } else {
                out.push(
                    part.parse()
                        .map_err(|_| format!("`{part}` is not an IP address"))?,
                );
            }
        }
        if out.is_empty() {
            return Err("no source address given".into());
        }
        Ok(Sources(out))
    }

    fn for_conn(&self, conn: usize) -> Option<IpAddr> {
        (!self.0.is_empty()).then(|| self.0[conn % self.0.len()])
    }
}

/// A connected socket, plain or in a TLS session, in blocking mode (for the handshake).
pub enum Connected {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Connected {
    /// Bounds every read (`None`: unbounded).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Connected::Plain(s) => s.set_read_timeout(t),
            Connected::Tls(s) => s.sock.set_read_timeout(t),
        }
    }
}

impl io::Read for Connected {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connected::Plain(s) => s.read(buf),
            Connected::Tls(s) => s.read(buf),
        }
    }
}

impl io::Write for Connected {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connected::Plain(s) => s.write(buf),
            Connected::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connected::Plain(s) => s.flush(),
            Connected::Tls(s) => s.flush(),
        }
    }
}

/// Connects to `url` as connection `conn` (its source address; TLS with `tls` for `wss://`)
/// and upgrades `target` with `headers`, every step within `timeout`. Returns the connection
/// and the bytes that came after the 101.
pub fn open(
    url: &UrlTemplate,
    sources: &Sources,
    conn: usize,
    target: &str,
    headers: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> io::Result<(Connected, Vec<u8>)> {
    let tcp = tcp_connect(url.addr, sources, conn, timeout)?;
    let mut c = match (url.tls, tls) {
        (false, _) => Connected::Plain(tcp),
        (true, Some(cfg)) => {
            let session = super::tls::session(cfg, &url.server_name)?;
            Connected::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
        }
        (true, None) => return Err(io::Error::other("wss:// without a TLS configuration")),
    };
    c.set_read_timeout(Some(timeout))?;
    let early = floodgate_wsclient::upgrade_on(&mut c, &url.host, target, headers)?;
    c.set_read_timeout(None)?;
    Ok((c, early))
}

/// Opens a TCP connection to `addr` from the source address of connection `conn`, within
/// `timeout`.
pub fn tcp_connect(
    addr: SocketAddr,
    sources: &Sources,
    conn: usize,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = sources.for_conn(conn) {
        socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.connect_timeout(&SockAddr::from(addr), timeout)?;
    Ok(socket.into())
}

/// What the preflight found wrong, as advice on what to change.
pub fn preflight(connections: usize, addr: SocketAddr, sources: &Sources) -> Result<(), String> {
    let need = connections as u64 + 64;
    if let Some(limit) = open_files_limit() {
        if limit < need {
            return Err(format!(
                "{connections} connections need about {need} file descriptors but `ulimit -n` is \
                 {limit}; raise it first (ulimit -n {})",
                need.next_power_of_two().max(1024)
            ));
        }
    }
    if let Some((lo, hi)) = port_range() {
        let ports = u64::from(hi.saturating_sub(lo)) + 1;
        let addrs = sources.0.len().max(1) as u64;
        if connections as u64 > ports * addrs {
            return Err(format!(
                "{connections} connections to {addr} need more than the {ports} ephemeral ports of \
                 {addrs} source address(es) (net.ipv4.ip_local_port_range is {lo} {hi}); add \
                 source addresses (--source-addr 127.0.0.1-127.0.0.{}) or widen the range \
                 (sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\")",
                (connections as u64).div_ceil(ports).clamp(2, 254)
            ));
        }
    }
    Ok(())
}

/// The soft limit on open files, from /proc/self/limits.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

fn port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_templates_fill_conn_user_and_token() {
        let u =
            UrlTemplate::parse("ws://127.0.0.1:9000/ws?c={conn}&u={user}&token={token}").unwrap();
        assert_eq!(u.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(u.host, "127.0.0.1:9000");
        assert!(u.has_token_slot());
        assert_eq!(
            u.target_for(7, "u7", Some("t.k.n")),
            "/ws?c=7&u=u7&token=t.k.n"
        );
        let u = UrlTemplate::parse("ws://127.0.0.1:9000").unwrap();
        assert_eq!(u.target, "/");
        let u = UrlTemplate::parse("ws://localhost:9/x").unwrap();
        assert!(u.addr.ip().is_loopback());
        assert!(UrlTemplate::parse("http://x").is_err());
        let t = UrlTemplate::parse("wss://localhost/feed").unwrap();
        assert!(t.tls);
        assert_eq!(t.addr.port(), 443);
        assert_eq!(t.server_name, "localhost");
        assert_eq!(
            UrlTemplate::parse("ws://127.0.0.1:9/").unwrap().server_name,
            "127.0.0.1"
        );
        assert!(UrlTemplate::parse("ws://{user}.x:1/").is_err());
    }

    #[test]
    fn sources_parse_lists_and_ranges() {
        let s = Sources::parse("127.0.0.1-127.0.0.3,127.0.1.9").unwrap();
        assert_eq!(s.0.len(), 4);
        assert_eq!(s.for_conn(5).unwrap().to_string(), "127.0.0.2");
        assert!(Sources::parse("127.0.0.9-127.0.0.1").is_err());
        assert!(Sources::parse("nope").is_err());
    }

    #[test]
    fn connections_leave_from_their_source_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sources = Sources::parse("127.0.0.2-127.0.0.3").unwrap();
        for conn in 0..4 {
            let _c = tcp_connect(addr, &sources, conn, Duration::from_secs(5)).unwrap();
            let (_s, peer) = l.accept().unwrap();
            let want = if conn % 2 == 0 {
                "127.0.0.2"
            } else {
                "127.0.0.3"
            };
            assert_eq!(peer.ip().to_string(), want, "connection {conn}");
        }
    }

    #[test]
    fn the_preflight_names_what_to_change() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        preflight(10, addr, &Sources::default()).unwrap();
        if let Some(limit) = open_files_limit() {
            if limit < 1 << 40 {
                let e = preflight(limit as usize, addr, &Sources::default()).unwrap_err();
                assert!(e.contains("ulimit -n"), "{e}");
            }
        }
        if let (Some((lo, hi)), Some(limit)) = (port_range(), open_files_limit()) {
            let ports = usize::from(hi - lo) + 1;
            if (limit as usize) > ports * 2 + 100 {
                let e = preflight(ports + 10, addr, &Sources::default()).unwrap_err();
                assert!(e.contains("--source-addr"), "{e}");
            }
        }
    }
}

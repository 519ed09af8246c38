//! The pools' background work, on one thread with its own small runtime: active health checks of every
//! server of a route with `[routes.health_check]` (a TCP connect, or `GET path` expecting a 2xx, within
//! `timeout`, every `interval`), re-resolution of servers given by host name (every
//! `resolve_interval`; a failed resolution keeps the last address), and the sweep of every server's idle
//! connections (those past the route's `idle_timeout` or closed by the server are closed; every
//! [`reap_interval`]). Results go to the pool ([`Pool::checked`], [`Upstream::set_addr`],
//! [`Upstream::reap_idle`]); a reload's new table is picked up on the next tick.
//!
//! A check carries no credential and none of the identity headers: only `Host`, `User-Agent:
//! tokengate-health-check` and `Connection: close`.

use super::pool::{reap_interval, Pool};
use super::upstream::{Upstream, UpstreamStream};
use super::Table;
use crate::config::HealthCheckConfig;
use crate::shutdown::Shutdown;
use arc_swap::ArcSwap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the thread looks for checks and resolutions that are due.
const TICK: Duration = Duration::from_millis(10);
/// How often when no route has checks or host names to resolve.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// Runs the checks and resolutions of whatever table is current until `stop`.
pub fn run(table: Arc<ArcSwap<Table>>, stop: Arc<Shutdown>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("health checks: cannot start their runtime: {e}; servers are only watched passively");
            return;
        }
    };
    rt.block_on(async move {
        while !stop.is_stopped() {
            let t = table.load_full();
            tick(&t);
            // Nothing to watch (no checks, no host names): wake rarely, so that the serving threads'
            // cores are not disturbed for nothing; a reload is still seen within IDLE_TICK.
            let busy = t.io.iter().any(|io| {
                io.pool.check.is_some() || io.pool.members.iter().any(|m| is_name(&m.upstream.host))
            });
            tokio::time::sleep(if busy { TICK } else { IDLE_TICK }).await;
        }
    });
}

/// Starts every check and resolution that is due (each runs as its own task; a server is never checked
/// twice at once).
fn tick(table: &Arc<Table>) {
    let now = crate::clock::mono_nanos();
    for (r, io) in table.io.iter().enumerate() {
        let pool = &io.pool;
        for (i, m) in pool.members.iter().enumerate() {
            let up = &m.upstream;
            if now >= m.next_reap.load(Ordering::Relaxed) {
                m.next_reap.store(
                    now + reap_interval(up.idle_timeout).as_nanos() as u64,
                    Ordering::Relaxed,
                );
                let closed = up.reap_idle();
                if closed > 0 {
                    log::debug!(
                        "route {}: server {}: closed {closed} idle connections",
                        pool.route,
                        up.label
                    );
                }
            }
            if let Some(check) = &pool.check {
                if now >= m.next_check.load(Ordering::Relaxed)
                    && !m.probing.swap(true, Ordering::AcqRel)
                {
                    m.next_check
                        .store(now + check.interval.as_nanos() as u64, Ordering::Relaxed);
                    let table = table.clone();
                    tokio::spawn(async move {
                        let pool = &table.io[r].pool;
                        let m = &pool.members[i];
                        let check = pool.check.as_ref().expect("checked pool");
                        let result = probe(&m.upstream, check).await;
                        pool.checked(i, result);
                        m.probing.store(false, Ordering::Release);
                    });
                }
            }
            if is_name(&m.upstream.host) && now >= m.next_resolve.load(Ordering::Relaxed) {
                let first = m.next_resolve.load(Ordering::Relaxed) == 0;
                m.next_resolve.store(
                    now + pool.resolve_interval.as_nanos() as u64,
                    Ordering::Relaxed,
                );
                // The configuration resolved it a moment ago.
                if !first {
                    let table = table.clone();
                    tokio::spawn(async move { resolve(&table.io[r].pool, i).await });
                }
            }
        }
    }
}

/// Whether `host:port` names its host rather than giving an IP address.
fn is_name(authority: &str) -> bool {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_err()
}

/// Resolves server `i`'s host again; a new address takes over for new connections.
async fn resolve(pool: &Pool, i: usize) {
    let up = &pool.members[i].upstream;
    match tokio::net::lookup_host(up.host.as_str()).await {
        Ok(mut addrs) => match addrs.next() {
            Some(addr) => {
                let old = up.addr();
                if up.set_addr(addr) {
                    log::info!(
                        "route {}: server {} now resolves to {addr} (was {old})",
                        pool.route,
                        up.label
                    );
                }
            }
            None => log::warn!(
                "route {}: server {} resolves to no address; keeping {}",
                pool.route,
                up.label,
                up.addr()
            ),
        },
        Err(e) => log::warn!(
            "route {}: server {} does not resolve ({e}); keeping {}",
            pool.route,
            up.label,
            up.addr()
        ),
    }
}

/// One check of `up`: a connection (and TLS handshake, for https), then for an HTTP check the status of
/// `GET path`, all within `timeout`.
async fn probe(up: &Upstream, check: &HealthCheckConfig) -> Result<(), String> {
    let exchange = async {
        let mut conn = up
            .connect()
            .await
            .map_err(|(kind, e)| format!("{}: {e}", kind.as_str()))?;
        let Some(path) = &check.path else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tokengate-health-check\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n",
            up.host
        );
        conn.stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let status = read_status(&mut conn.stream).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

/// Reads a response's status line (`HTTP/1.x NNN ...`) and returns the code.
async fn read_status(stream: &mut UpstreamStream) -> Result<u16, String> {
    let mut buf = [0u8; 1024];
    let mut len = 0;
    loop {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        len += n;
        if let Some(end) = buf[..len].windows(2).position(|w| w == b"\r\n") {
            return parse_status(&buf[..end]).ok_or_else(|| {
                format!(
                    "not an HTTP status line: {:?}",
                    String::from_utf8_lossy(&buf[..end.min(64)])
                )
            });
        }
        if len == buf.len() {
            return Err("status line over 1 KiB".into());
        }
    }
}

fn parse_status(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_and_names() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert!(is_name("video-3.internal:8700"));
        assert!(is_name("localhost:80"));
        assert!(!is_name("10.0.0.5:8700"));
        assert!(!is_name("[::1]:8700"));
    }
}

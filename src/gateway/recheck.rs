//! The re-check of open streams: a WebSocket tunnel or a streaming upload outlives the decision that let
//! it through, so the transport asks again, every tick, whether that decision would still hold
//! ([`Gate::recheck`]). The question is asked of what the stream was let through with — the route's
//! name and the digest of the credential presented — against the token index and the route table as
//! they are now, through the same token rules as every request ([`auth::authorize_digest`]):
//!
//! - a token edited and then revoked is seen revoked (the index entry is looked up again by digest; the
//!   one the stream started with may have been replaced by the edit);
//! - a secret rotated out without grace, or whose grace period ended, is unknown;
//! - an expiry (also one set by an edit), a certificate binding, and the route's required scope with
//!   `[roles]` as the current table resolves them (a reload may take a scope away from a role);
//! - the route's required group and license, and the scope a group's role granted: a member removed, a
//!   group deleted, a seat revoked (each a new revision of the token's entry) or a license past its end
//!   (the clock alone) ends the stream;
//! - the route itself: gone from the table after a reload, no longer relaying WebSockets, now TLS-only,
//!   or now asking for a token the stream never presented.
//!
//! Pure like the decision: no I/O, no allocation, no lock (an index lookup and a scan of the routes).

use super::auth::{self, Denial};
use super::decision::{needs_tls, required, Gate, TlsPeer};
use super::routes::RouteTable;
use crate::config::AuthMode;
use crate::tokens::format::Digest;

/// What an open stream was let through with: enough to ask the decision's questions again.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'a> {
    /// The route's name: a reload replaces the table, and the route is found again by its name.
    pub route: &'a str,
    /// The digest of the credential presented (`None`: let through on a public route).
    pub digest: Option<Digest>,
    /// What the TLS handshake established (`None`: plain TCP).
    pub tls: Option<&'a TlsPeer>,
    /// A WebSocket tunnel: the route must still relay WebSockets.
    pub websocket: bool,
}

/// Why an open stream must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lapse {
    /// No route of that name in the table any more (a reload removed or renamed it).
    RouteGone,
    /// The route no longer relays WebSockets (`websocket = false` after a reload).
    WebSocketOff,
    /// The route is now `tls_only` and the stream came over plain TCP.
    TlsRequired,
    /// The token rules say no now (revoked, rotated out, grace ended, expired, certificate, scope), or
    /// the route now needs a token and none was presented.
    Denied(Denial),
}

impl Lapse {
    /// For the log: what ended the stream. Never a token, digest or user.
    pub fn describe(&self) -> String {
        match self {
            Lapse::RouteGone => "its route is no longer configured".into(),
            Lapse::WebSocketOff => "its route no longer relays WebSockets".into(),
            Lapse::TlsRequired => "its route is now served over TLS only".into(),
            Lapse::Denied(d) => d.description(),
        }
    }

    /// The answer to an upload cut for this lapse (HTTP/1.1 and HTTP/2 alike).
    pub fn upload_refusal(&self) -> super::Refusal {
        use super::answer::Answer;
        match self {
            Lapse::Denied(denial) => super::Refusal::denial(
                denial,
                format!(
                    "{} (while the request was being sent)",
                    denial.description()
                ),
            ),
            Lapse::TlsRequired => super::Refusal::new(
                Answer::TlsRequired,
                "this route is served over TLS (https) only",
            ),
            Lapse::RouteGone | Lapse::WebSocketOff => super::Refusal::new(
                Answer::NotFound,
                "the route was removed while the request was being sent",
            ),
        }
    }
}

impl Gate {
    /// Whether a stream let through as `admitted` would still be let through by the route table
    /// `table` and the token index, at unix time `now`. Called by the transport at every check tick
    /// of an open tunnel or upload.
    pub fn recheck(
        &self,
        table: &RouteTable,
        admitted: &Admitted<'_>,
        now: u64,
    ) -> Result<(), Lapse> {
        let route = table
            .routes()
            .iter()
            .find(|r| *r.name == *admitted.route)
            .ok_or(Lapse::RouteGone)?;
        if admitted.websocket && !route.websocket {
            return Err(Lapse::WebSocketOff);
        }
        if needs_tls(route, admitted.tls) {
            return Err(Lapse::TlsRequired);
        }
        match (&admitted.digest, route.auth) {
            // A token presented is checked whatever the route's auth is now: the upstream was told
            // the stream is its holder's.
            (Some(digest), _) => {
                let client_cert = admitted.tls.and_then(|t| t.client_cert_sha256.as_ref());
                auth::authorize_digest(&self.index, digest, required(route), client_cert, now)
                    .map(drop)
                    .map_err(Lapse::Denied)
            }
            (None, AuthMode::Bearer) => Err(Lapse::Denied(Denial::Missing)),
            (None, AuthMode::None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Rate};
    use crate::gateway::throttle::Throttle;
    use crate::tokens::format::Token;
    use crate::tokens::index::Index;
    use crate::tokens::store::IndexRow;
    use std::path::Path;
    use std::sync::Arc;

    const ROUTES: &str = r#"
[roles]
camera = ["video:live", "telemetry:write"]
[[routes]]
name = "ws"
path_prefix = "/ws"
upstream = "127.0.0.1:1"
websocket = true
[[routes]]
name = "scoped"
path_prefix = "/scoped"
upstream = "127.0.0.1:2"
websocket = true
required_scope = "video:live"
[[routes]]
name = "public"
path_prefix = "/public"
upstream = "127.0.0.1:3"
auth = "none"
websocket = true
"#;

    fn table(text: &str) -> RouteTable {
        let text = format!("[gateway]\nlisten = \"127.0.0.1:8080\"\n{text}");
        RouteTable::new(&Config::parse(&text, Path::new("t.toml")).unwrap())
    }

    fn row(id: i64, t: &Token, scopes: &[&str], rev: i64) -> IndexRow {
        IndexRow {
            id,
            user: "alice".into(),
            digest: t.digest(),
            prev_digest: None,
            prev_valid_until: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: None,
            revoked: false,
            rev,
            bound_cert: None,
            rate_limit: None,
            quota: None,
            quota_used: 0,
            quota_period: None,
            leaked: false,
            access: Default::default(),
        }
    }

    fn gate() -> Gate {
        Gate {
            index: Arc::new(Index::new()),
            throttle: Throttle::new(0, 60, 1000),
            max_in_flight_per_token: 32,
        }
    }

    fn on<'a>(route: &'a str, t: &Token) -> Admitted<'a> {
        Admitted {
            route,
            digest: Some(t.digest()),
            tls: None,
            websocket: true,
        }
    }

    fn now() -> u64 {
        crate::clock::now()
    }

    #[test]
    fn a_token_in_good_standing_keeps_its_stream() {
        let (g, t) = (gate(), Token::generate());
        g.index.apply(&row(1, &t, &[], 1));
        assert_eq!(g.recheck(&table(ROUTES), &on("ws", &t), now()), Ok(()));
    }

    #[test]
    fn a_revoke_after_an_edit_is_seen() {
        let (g, t) = (gate(), Token::generate());
        g.index.apply(&row(1, &t, &[], 1));
        let first = g.index.get(&t.digest()).unwrap().entry;
        // An edit of a limit replaces the index entry; the revoke then lands on the new one only.
        let mut edited = row(1, &t, &[], 2);
        edited.rate_limit = Some(Rate::parse("5/s").unwrap());
        g.index.apply(&edited);
        let mut revoked = edited.clone();
        (revoked.revoked, revoked.rev) = (true, 3);
        g.index.apply(&revoked);
        assert!(
            !first.is_revoked(),
            "the entry the stream started with never sees the revoke"
        );
        assert_eq!(
            g.recheck(&table(ROUTES), &on("ws", &t), now()),
            Err(Lapse::Denied(Denial::Revoked))
        );
    }

    #[test]
    fn an_expiry_set_by_an_edit_is_seen() {
        let (g, t) = (gate(), Token::generate());
        g.index.apply(&row(1, &t, &[], 1));
        let mut edited = row(1, &t, &[], 2);
        edited.expires_at = Some(now() as i64 + 10);
        g.index.apply(&edited);
        let routes = table(ROUTES);
        assert_eq!(g.recheck(&routes, &on("ws", &t), now()), Ok(()));
        assert_eq!(
            g.recheck(&routes, &on("ws", &t), now() + 10),
            Err(Lapse::Denied(Denial::Expired))
        );
    }

    #[test]
    fn a_secret_rotated_out_is_unknown_at_once_or_when_its_grace_ends() {
        let (g, old, new) = (gate(), Token::generate(), Token::generate());
        g.index.apply(&row(1, &old, &[], 1));
        let routes = table(ROUTES);
        // With grace: the old secret holds until the grace ends, the new one after.
        let mut graced = row(1, &new, &[], 2);
        graced.prev_digest = Some(old.digest());
        let until = now() + 100;
        graced.prev_valid_until = Some(until as i64);
        g.index.apply(&graced);
        assert_eq!(g.recheck(&routes, &on("ws", &old), now()), Ok(()));
        assert_eq!(
            g.recheck(&routes, &on("ws", &old), until),
            Err(Lapse::Denied(Denial::Unknown))
        );
        assert_eq!(g.recheck(&routes, &on("ws", &new), until), Ok(()));
        // Without grace: the old secret is gone at once.
        let mut rotated = row(1, &Token::generate(), &[], 3);
        rotated.prev_digest = Some(new.digest());
        g.index.apply(&rotated);
        assert_eq!(
            g.recheck(&routes, &on("ws", &new), now()),
            Err(Lapse::Denied(Denial::Unknown))
        );
    }

    #[test]
    fn the_required_scope_is_resolved_with_the_current_roles() {
        let (g, t) = (gate(), Token::generate());
        g.index.apply(&row(1, &t, &["@camera"], 1));
        assert_eq!(g.recheck(&table(ROUTES), &on("scoped", &t), now()), Ok(()));
        let edited = ROUTES.replace(
            r#"camera = ["video:live", "telemetry:write"]"#,
            r#"camera = ["telemetry:write"]"#,
        );
        assert_eq!(
            g.recheck(&table(&edited), &on("scoped", &t), now()),
            Err(Lapse::Denied(Denial::InsufficientScope(
                "video:live".into()
            )))
        );
        // A scope held directly is not affected by roles.
        let (g, t) = (gate(), Token::generate());
        g.index.apply(&row(1, &t, &["video:live"], 1));
        assert_eq!(g.recheck(&table(&edited), &on("scoped", &t), now()), Ok(()));
    }

    #[test]
    fn the_route_as_the_current_table_has_it() {
        let (g, t) = (gate(), Token::generate());
        g.index.apply(&row(1, &t, &[], 1));
        let gone = ROUTES.replace("name = \"ws\"", "name = \"renamed\"");
        assert_eq!(
            g.recheck(&table(&gone), &on("ws", &t), now()),
            Err(Lapse::RouteGone)
        );
        let off = ROUTES.replacen("websocket = true", "websocket = false", 1);
        assert_eq!(
            g.recheck(&table(&off), &on("ws", &t), now()),
            Err(Lapse::WebSocketOff)
        );
        // An upload on the same route is not a tunnel.
        let upload = Admitted {
            websocket: false,
            ..on("ws", &t)
        };
        assert_eq!(g.recheck(&table(&off), &upload, now()), Ok(()));
        let tls_only = ROUTES.replacen("websocket = true", "websocket = true\ntls_only = true", 1);
        assert_eq!(
            g.recheck(&table(&tls_only), &on("ws", &t), now()),
            Err(Lapse::TlsRequired)
        );
        let peer = TlsPeer::default();
        let over_tls = Admitted {
            tls: Some(&peer),
            ..on("ws", &t)
        };
        assert_eq!(g.recheck(&table(&tls_only), &over_tls, now()), Ok(()));
    }

    #[test]
    fn a_bound_token_needs_its_certificate() {
        let (g, t) = (gate(), Token::generate());
        let mut bound = row(1, &t, &[], 1);
        bound.bound_cert = Some([7; 32]);
        g.index.apply(&bound);
        let routes = table(ROUTES);
        let (mine, other) = (
            TlsPeer {
                client_cert_sha256: Some([7; 32]),
            },
            TlsPeer {
                client_cert_sha256: Some([8; 32]),
            },
        );
        let with = |peer| Admitted {
            tls: peer,
            ..on("ws", &t)
        };
        assert_eq!(g.recheck(&routes, &with(Some(&mine)), now()), Ok(()));
        for peer in [Some(&other), None] {
            assert_eq!(
                g.recheck(&routes, &with(peer), now()),
                Err(Lapse::Denied(Denial::CertificateMismatch))
            );
        }
    }

    #[test]
    fn public_routes_and_tokens_presented() {
        let (g, t) = (gate(), Token::generate());
        g.index.apply(&row(1, &t, &[], 1));
        let anonymous = Admitted {
            digest: None,
            ..on("public", &t)
        };
        let routes = table(ROUTES);
        assert_eq!(g.recheck(&routes, &anonymous, now()), Ok(()));
        // The route asks for a token now: a stream that never presented one ends.
        let bearer = ROUTES.replace("auth = \"none\"\n", "");
        assert_eq!(
            g.recheck(&table(&bearer), &anonymous, now()),
            Err(Lapse::Denied(Denial::Missing))
        );
        // A stream that presented a token (the route required one then) stays bound to it even on a
        // route that is public now.
        let mut revoked = row(1, &t, &[], 2);
        revoked.revoked = true;
        g.index.apply(&revoked);
        assert_eq!(
            g.recheck(&routes, &on("public", &t), now()),
            Err(Lapse::Denied(Denial::Revoked))
        );
        // An unknown digest is unknown.
        assert_eq!(
            g.recheck(&routes, &on("ws", &Token::generate()), now()),
            Err(Lapse::Denied(Denial::Unknown))
        );
    }
}

//! What a token gets from groups and licenses, as the index keeps it ([`Grants`], boxed on the entry:
//! most tokens have none): the roles of its groups, its group names, its licenses with their ends, and
//! the `x-token-groups` / `x-token-licenses` values, all built when the token is indexed so that a
//! request only compares and clones.
//!
//! A license's end is checked against the clock at decision time: one past `valid_until` grants nothing
//! and leaves `x-token-licenses` from that second on, with no write to the store. The header values for
//! every moment are built up front (one per distinct end), so that too allocates nothing per request.

use super::fields::is_privileged;
use super::store::Access;
use bytes::Bytes;
use http::HeaderValue;

/// A token's groups and licenses in memory.
#[derive(Debug)]
pub struct Grants {
    /// The roles its groups grant (sorted). They never grant `admin` or `tokens:self`.
    group_roles: Box<[Box<str>]>,
    /// Its groups (sorted).
    groups: Box<[Box<str>]>,
    /// Its licenses (sorted by name) and until when each is valid (unix seconds; `u64::MAX`: no end).
    licenses: Box<[(Box<str>, u64)]>,
    /// `x-token-groups` (`None`: no groups).
    groups_value: Option<HeaderValue>,
    /// `x-token-licenses` by moment: the first entry whose bound is after now applies (ascending bounds,
    /// the last `u64::MAX`); `None`: no valid license then.
    licenses_values: Box<[(u64, Option<HeaderValue>)]>,
}

/// Joins names with single spaces into a header value (names are checked `a-z0-9._-`).
fn value<'a>(names: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let mut out = Vec::new();
    for n in names {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(n.as_bytes());
    }
    if out.is_empty() {
        return None;
    }
    HeaderValue::from_maybe_shared(Bytes::from(out.into_boxed_slice())).ok()
}

impl Grants {
    /// The in-memory form of what the store read (`None`: no group, no license).
    pub fn new(access: &Access) -> Option<Grants> {
        if access.is_empty() {
            return None;
        }
        let end = |u: Option<i64>| u.map_or(u64::MAX, |u| u.max(0) as u64);
        let licenses: Box<[(Box<str>, u64)]> = access
            .licenses
            .iter()
            .map(|(n, u)| (n.as_str().into(), end(*u)))
            .collect();
        let mut bounds: Vec<u64> = licenses.iter().map(|(_, u)| *u).collect();
        bounds.push(u64::MAX);
        bounds.sort_unstable();
        bounds.dedup();
        // Before bound b (and at or after the previous one), the licenses valid are those ending at b or later.
        let licenses_values = bounds
            .iter()
            .map(|&b| {
                let valid = licenses.iter().filter(|(_, u)| *u >= b).map(|(n, _)| &**n);
                (b, value(valid))
            })
            .collect();
        Some(Grants {
            group_roles: access
                .group_roles
                .iter()
                .map(|r| r.as_str().into())
                .collect(),
            groups: access.groups.iter().map(|g| g.as_str().into()).collect(),
            groups_value: value(access.groups.iter().map(String::as_str)),
            licenses,
            licenses_values,
        })
    }

    /// Whether one of its groups' roles is among `granting` (the roles that grant a route's scope).
    /// Never for `admin` or `tokens:self`: those are only granted on the token itself.
    pub fn grants(&self, scope: &str, granting: &[Box<str>]) -> bool {
        !is_privileged(scope) && self.group_roles.iter().any(|r| granting.contains(r))
    }

    pub fn group_roles(&self) -> impl Iterator<Item = &str> {
        self.group_roles.iter().map(|r| &**r)
    }

    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| &**g)
    }

    pub fn in_group(&self, name: &str) -> bool {
        self.groups.iter().any(|g| **g == *name)
    }

    /// Whether it holds license `name` valid at unix time `now`.
    pub fn holds(&self, name: &str, now: u64) -> bool {
        self.licenses.iter().any(|(n, u)| **n == *name && now < *u)
    }

    /// `x-token-groups`.
    pub fn groups_value(&self) -> Option<&HeaderValue> {
        self.groups_value.as_ref()
    }

    /// `x-token-licenses` at unix time `now` (the licenses valid then).
    pub fn licenses_value(&self, now: u64) -> Option<&HeaderValue> {
        self.licenses_values
            .iter()
            .find(|(b, _)| now < *b)
            .and_then(|(_, v)| v.as_ref())
    }

    /// The same identity as `access` (the entry is kept when nothing changed).
    pub fn same(this: Option<&Grants>, access: &Access) -> bool {
        match this {
            None => access.is_empty(),
            Some(g) => {
                let end = |u: Option<i64>| u.map_or(u64::MAX, |u| u.max(0) as u64);
                g.groups
                    .iter()
                    .map(|s| &**s)
                    .eq(access.groups.iter().map(String::as_str))
                    && g.group_roles
                        .iter()
                        .map(|s| &**s)
                        .eq(access.group_roles.iter().map(String::as_str))
                    && g.licenses
                        .iter()
                        .map(|(n, u)| (&**n, *u))
                        .eq(access.licenses.iter().map(|(n, u)| (n.as_str(), end(*u))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::parse(
            Some("apiary-42\u{1f}device\u{1e}association\u{1f}"),
            Some("video\u{1f}100\u{1e}audio\u{1f}200\u{1e}forever\u{1f}"),
        )
    }

    #[test]
    fn licenses_stop_at_their_end_without_a_write() {
        let g = Grants::new(&access()).unwrap();
        assert!(g.holds("video", 99) && !g.holds("video", 100));
        assert!(g.holds("audio", 199) && !g.holds("audio", 200));
        assert!(g.holds("forever", u64::MAX - 1));
        assert!(!g.holds("vide", 0) && !g.holds("Video", 0));
        let v = |t| g.licenses_value(t).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(v(0).as_deref(), Some("audio forever video"));
        assert_eq!(v(100).as_deref(), Some("audio forever"));
        assert_eq!(v(200).as_deref(), Some("forever"));
        let only = Grants::new(&Access::parse(None, Some("video\u{1f}100"))).unwrap();
        assert!(only.licenses_value(99).is_some() && only.licenses_value(100).is_none());
    }

    #[test]
    fn group_roles_grant_but_never_privileged_scopes() {
        let g = Grants::new(&access()).unwrap();
        assert_eq!(g.groups_value().unwrap(), "apiary-42 association");
        assert!(g.in_group("apiary-42") && !g.in_group("apiary-4") && !g.in_group("Apiary-42"));
        let granting: Vec<Box<str>> = vec!["device".into()];
        assert!(g.grants("telemetry:write", &granting));
        assert!(!g.grants("telemetry:write", &["other".into()]));
        assert!(!g.grants("admin", &granting) && !g.grants("tokens:self", &granting));
        assert!(Grants::new(&Access::default()).is_none());
        assert!(Grants::same(Some(&g), &access()));
        assert!(!Grants::same(Some(&g), &Access::default()));
        assert!(Grants::same(None, &Access::default()));
    }
}

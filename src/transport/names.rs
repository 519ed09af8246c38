//! Field names as upstream frameworks read them, and what the gateway knows about each: hop-by-hop fields,
//! the framing fields' look-alikes, proxy fields (who the client is and how it came).
//!
//! Frameworks normalise names before an application sees them (CGI/WSGI's `HTTP_X_USER_ID`, others drop
//! every separator), so one field can be sent in many spellings that the application reads as one. The
//! gateway compares names the same way ([`same_field`], [`Folded`]): whatever it removes, refuses or
//! believes, it does so in every spelling. Used by [`super::http1`] (framing look-alikes, hop-by-hop
//! fields in both directions) and [`super::rewrite`] (the forwarded head).

/// Field names as upstream frameworks may read them: ASCII case ignored and every byte that is not a
/// letter or digit skipped. CGI and WSGI turn `Transfer_Encoding` and `Transfer-Encoding` alike into
/// `HTTP_TRANSFER_ENCODING`; other frameworks drop separators altogether, so `X.User.Id`, `XUserId`,
/// `x-user-id-` and `X__User--Id` all read as `x-user-id`. Every byte other than a letter or digit that
/// a field name may hold (RFC 9110 `tchar`: `!#$%&'*+-.^_|~` and the backtick) is treated alike.
/// Byte-wise, allocation-free; most names differ at their first letter. To test one name against many,
/// fold it once ([`Folded`]).
pub fn same_field(name: &[u8], target: &[u8]) -> bool {
    let mut t = target.iter().filter(|b| b.is_ascii_alphanumeric());
    for &b in name {
        if !b.is_ascii_alphanumeric() {
            continue;
        }
        match t.next() {
            Some(&c) if c.eq_ignore_ascii_case(&b) => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// A field name folded once as [`same_field`] reads it (lower case, letters and digits only), on the
/// stack, to be compared with many folded names at the cost of a slice comparison each.
pub struct Folded<'a> {
    name: &'a [u8],
    buf: [u8; Folded::MAX],
    len: usize,
}

impl<'a> Folded<'a> {
    /// Folded names up to this length are kept; a longer one equals no name the gateway knows (those
    /// are all shorter) and is compared with configured names byte-wise.
    pub const MAX: usize = 40;

    pub fn new(name: &'a [u8]) -> Folded<'a> {
        let mut f = Folded {
            name,
            buf: [0; Folded::MAX],
            len: 0,
        };
        for &b in name {
            if b.is_ascii_alphanumeric() {
                if f.len == Folded::MAX {
                    f.len = Folded::MAX + 1;
                    break;
                }
                f.buf[f.len] = b.to_ascii_lowercase();
                f.len += 1;
            }
        }
        f
    }

    /// The folded name (`None` when longer than [`Folded::MAX`]).
    pub fn get(&self) -> Option<&[u8]> {
        (self.len <= Folded::MAX).then(|| &self.buf[..self.len])
    }

    /// Whether the name is one of `folded` (names written folded: `b"keepalive"`).
    pub fn is_any(&self, folded: &[&[u8]]) -> bool {
        self.get().is_some_and(|f| folded.contains(&f))
    }

    /// Whether the folded name starts with `folded_prefix`.
    pub fn starts_with(&self, folded_prefix: &[u8]) -> bool {
        self.buf[..self.len.min(Folded::MAX)].starts_with(folded_prefix)
    }

    /// Whether the name reads as `target` (any spelling, e.g. a configured `x-device-id`).
    pub fn is(&self, target: &[u8]) -> bool {
        match self.get() {
            Some(f) => same_field(f, target),
            None => same_field(self.name, target),
        }
    }
}

/// Hop-by-hop fields, folded: they describe one connection and are never forwarded (RFC 9110 section
/// 7.6.1), nor are their look-alikes. `Content-Length` and `Transfer-Encoding` are also here: the
/// gateway writes its own framing.
pub const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keepalive",
    b"proxyconnection",
    b"te",
    b"trailer",
    b"transferencoding",
    b"upgrade",
    b"contentlength",
    b"proxyauthenticate",
];

/// Whether `name` is one of [`HOP_BY_HOP`] in any spelling ([`same_field`]).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    Folded::new(name).is_any(&HOP_BY_HOP)
}

/// Fields that tell an upstream who the client is, what it asked for or how it reached the gateway, as
/// proxies and CDNs set them (besides the whole `X-Forwarded-*` family). Believed only from a trusted
/// proxy: from anyone else each is a forged client address, host, scheme or URL (`X-Original-URL` and
/// `X-Rewrite-URL` re-route a request inside Symfony, IIS and others, past the gateway's path policy).
pub const PROXY_FIELDS: [&str; 14] = [
    "forwarded",
    "forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "front-end-https",
    "x-url-scheme",
];

/// [`PROXY_FIELDS`] folded ([`Folded`]), in the same order.
const PROXY_FOLDED: [&[u8]; 14] = [
    b"forwarded",
    b"forwardedfor",
    b"xrealip",
    b"xclientip",
    b"clientip",
    b"trueclientip",
    b"xclusterclientip",
    b"cfconnectingip",
    b"fastlyclientip",
    b"xoriginalurl",
    b"xrewriteurl",
    b"xoriginalhost",
    b"frontendhttps",
    b"xurlscheme",
];

/// Whether a field is a proxy field in any spelling ([`same_field`]): the `X-Forwarded-*` family
/// (`X-Forwarded-For`, `-Proto`, `-Host`, `-Port`, `-Prefix`, `-Server`, `-Ssl`, `-Uri`, `-User`, ...)
/// or one of [`PROXY_FIELDS`].
pub fn proxy_field(name: &Folded<'_>) -> bool {
    name.starts_with(b"xforwarded") || name.is_any(&PROXY_FOLDED)
}

/// Whether a proxy field is spelled as proxies write it: a known name in any case, or `X-Forwarded-`
/// followed by words of letters and digits joined by single `-`. A trusted proxy's own fields are spelled
/// so; a look-alike it passes on (`X_Real_IP`, `X.Forwarded.Host`) comes from its client and is dropped.
pub fn plain_proxy_spelling(name: &[u8]) -> bool {
    const FAMILY: &[u8] = b"x-forwarded-";
    if PROXY_FIELDS
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
    {
        return true;
    }
    name.len() > FAMILY.len()
        && name[..FAMILY.len()].eq_ignore_ascii_case(FAMILY)
        && name[FAMILY.len()..]
            .split(|&b| b == b'-')
            .all(|w| !w.is_empty() && w.iter().all(u8::is_ascii_alphanumeric))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_compare_like_upstream_frameworks_do() {
        // The spellings an external smuggling corpus forwarded before, and then some.
        for name in [
            "x-user-id",
            "x_user_id",
            "X_User-Id",
            "X__User--_Id",
            "X.User.Id",
            "XUserId",
            "X-User-Id-",
            "-x-user-id",
            "x~user|id",
            "X!User#Id$",
            "x%user&id'",
            "x*user+id^",
            "x`user.id",
        ] {
            assert!(same_field(name.as_bytes(), b"x-user-id"), "{name}");
        }
        assert!(same_field(b"Transfer---Encoding", b"transfer-encoding"));
        assert!(same_field(b"Content.Length", b"content-length"));
        assert!(same_field(b"CONTENTLENGTH", b"content-length"));
        assert!(!same_field(b"x-user-idx", b"x-user-id"));
        assert!(!same_field(b"x-user-i", b"x-user-id"));
        assert!(!same_field(b"xx-user-id", b"x-user-id"));
        assert!(!same_field(b"", b"x-user-id"));
        assert!(!same_field(b"-", b"te"));
        assert!(is_hop_by_hop(b"Keep_Alive") && is_hop_by_hop(b"content_length"));
        assert!(
            is_hop_by_hop(b"Keep.Alive") && is_hop_by_hop(b"T-E") && is_hop_by_hop(b"UpGrade-")
        );
        assert!(!is_hop_by_hop(b"x-keep-alive"));
        assert!(Folded::new(b"X_Forwarded.Host").starts_with(b"xforwarded"));
        assert!(Folded::new(b"XForwarded").starts_with(b"xforwarded"));
        assert!(!Folded::new(b"X-Forwarde").starts_with(b"xforwarded"));
        assert!(!Folded::new(b"Forwarded").starts_with(b"xforwarded"));
        // Folded once, compared many times: the same answers as `same_field`.
        let long = format!("x-{}", "a-".repeat(60));
        for name in ["X.User.Id", "x-user-idx", "XUSERID", "", "-", long.as_str()] {
            let f = Folded::new(name.as_bytes());
            for target in ["x-user-id", "te", long.as_str()] {
                assert_eq!(
                    f.is(target.as_bytes()),
                    same_field(name.as_bytes(), target.as_bytes()),
                    "{name} {target}"
                );
            }
        }
        assert_eq!(Folded::new(long.as_bytes()).get(), None);
        assert!(Folded::new(long.as_bytes()).starts_with(b"xaaa"));
        assert_eq!(Folded::new(b"X-User_Id").get(), Some(&b"xuserid"[..]));
    }

    #[test]
    fn proxy_fields_in_every_spelling() {
        for (plain, folded) in PROXY_FIELDS.iter().zip(PROXY_FOLDED) {
            assert_eq!(Folded::new(plain.as_bytes()).get(), Some(folded));
            assert!(plain_proxy_spelling(plain.as_bytes()), "{plain}");
        }
        let proxy = |n: &str| proxy_field(&Folded::new(n.as_bytes()));
        for name in [
            "Forwarded",
            "forwarded_",
            "X-Real-IP",
            "X.Real.IP",
            "XRealIP",
            "X-Forwarded-Host",
            "x_forwarded_host",
            "X-Forwarded-Anything-New",
            "XForwarded",
            "X-Original-URL",
            "x.original.url",
        ] {
            assert!(proxy(name), "{name}");
        }
        for name in [
            "Host",
            "X-Forward",
            "Forwarded-Host-Name",
            "X-Realip-Hint",
            "Referer",
        ] {
            assert!(!proxy(name), "{name}");
        }
        for name in [
            "X-Forwarded-Host",
            "x-forwarded-port",
            "X-Real-IP",
            "forwarded",
            "X-Forwarded-Foo-Bar",
        ] {
            assert!(plain_proxy_spelling(name.as_bytes()), "{name}");
        }
        for name in [
            "X_Real_IP",
            "X.Forwarded.Host",
            "XForwardedHost",
            "X-Forwarded--Port",
            "X-Forwarded-Port-",
            "x-forwarded_prefix",
            "X-Forwarded-",
            "Forwarded.",
        ] {
            assert!(!plain_proxy_spelling(name.as_bytes()), "{name}");
        }
    }
}

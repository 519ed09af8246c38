//! A token's fields as people write them — `token create` / `token set` flags, or the admin API's JSON —
//! checked once into what the store takes ([`NewToken`], [`TokenPatch`]). The CLI and the API both call
//! [`new_token`] and [`token_patch`], so the same bad input is refused with the same words on both sides:
//! a [`FieldError`] is the field and the problem, and each side names the field in its own spelling
//! (`--rate-limit: ...` on the command line, `rate_limit: ...` in the API's answer) in front of the same
//! problem text. Each side only maps its input onto [`NewInput`] / [`PatchInput`] and the error onto its
//! own answer (exit status, 400).
//!
//! What is checked here is the input itself. Whether the caller may grant it (the admin rule) is decided
//! elsewhere (`ops::admin::rule`), after these checks.

use crate::config::{Rate, Roles};
use crate::tokens::fields::Quota;
use crate::tokens::fields::{
    check_label, check_roles, check_scopes, check_user, expiry, role_grant,
};
use crate::tokens::store::{parse_sha256_hex, NewToken, TokenPatch};

/// Which field a [`FieldError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    User,
    Label,
    Scopes,
    Roles,
    ExpiresIn,
    ExpiresAt,
    BoundCert,
    RateLimit,
    Quota,
}

impl Field {
    /// The field as the admin API's JSON names it.
    pub fn json(self) -> &'static str {
        match self {
            Field::User => "user",
            Field::Label => "label",
            Field::Scopes => "scopes",
            Field::Roles => "roles",
            Field::ExpiresIn => "expires_in",
            Field::ExpiresAt => "expires_at",
            Field::BoundCert => "bound_cert_sha256",
            Field::RateLimit => "rate_limit",
            Field::Quota => "quota",
        }
    }

    /// The option of `token create` / `token set` that gives the field.
    pub fn flag(self) -> &'static str {
        match self {
            Field::User => "--user",
            Field::Label => "--label",
            Field::Scopes => "--scope",
            Field::Roles => "--role",
            Field::ExpiresIn => "--expires-in",
            Field::ExpiresAt => "--expires-at",
            Field::BoundCert => "--bind-cert-sha256",
            Field::RateLimit => "--rate-limit",
            Field::Quota => "--quota",
        }
    }
}

/// A refused field: which one, and what is wrong with it (the same words for every caller; never
/// anything secret: token fields are not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: Field,
    pub problem: String,
}

impl FieldError {
    /// As the command line says it: `--rate-limit: "often" is not a rate ...`.
    pub fn for_cli(&self) -> String {
        format!("{}: {}", self.field.flag(), self.problem)
    }

    /// As the admin API says it: `rate_limit: "often" is not a rate ...`.
    pub fn for_api(&self) -> String {
        format!("{}: {}", self.field.json(), self.problem)
    }
}

/// Tags a check's problem with its field.
fn on<T>(field: Field, r: Result<T, String>) -> Result<T, FieldError> {
    r.map_err(|problem| FieldError { field, problem })
}

/// A new token's fields as written, before any check. Absent options are `None` / empty.
#[derive(Clone, Debug, Default)]
pub struct NewInput {
    pub user: String,
    pub label: String,
    /// A duration from now (`30d`).
    pub expires_in: Option<String>,
    /// An RFC 3339 time.
    pub expires_at: Option<String>,
    pub scopes: Vec<String>,
    /// Role names from the configuration's `[roles]`.
    pub roles: Vec<String>,
    /// The SHA-256 of the certificate to bind to, as hex (colons allowed).
    pub bound_cert_sha256: Option<String>,
    /// `10/s`, `600/m`, ...
    pub rate_limit: Option<String>,
    /// `100000/day`, `2000000/month`.
    pub quota: Option<String>,
}

/// A change to a token's fields as written, before any check. Absent: unchanged; `Some(None)`: removed.
#[derive(Clone, Debug, Default)]
pub struct PatchInput {
    pub label: Option<String>,
    /// A new expiry as a duration from now.
    pub expires_in: Option<String>,
    /// A new expiry as an RFC 3339 time, or `Some(None)`: never expires.
    pub expires_at: Option<Option<String>>,
    pub rate_limit: Option<Option<String>>,
    pub quota: Option<Option<String>>,
}

/// Checks every field of a new token, in this order: user, label, scopes, roles (against `roles`, the
/// configuration's `[roles]`), expiry, certificate binding, rate limit, quota. The first problem is the
/// error.
pub fn new_token(input: NewInput, roles: &Roles) -> Result<NewToken, FieldError> {
    on(Field::User, check_user(&input.user))?;
    on(Field::Label, check_label(&input.label))?;
    on(Field::Scopes, check_scopes(&input.scopes))?;
    on(Field::Roles, check_roles(&input.roles, roles))?;
    let expires_at = match (input.expires_in.as_deref(), input.expires_at.as_deref()) {
        (Some(_), Some(_)) => on(Field::ExpiresAt, Err(BOTH_EXPIRIES.into()))?,
        (Some(d), None) => on(Field::ExpiresIn, expiry(Some(d), None))?,
        (None, Some(t)) => on(Field::ExpiresAt, expiry(None, Some(t)))?,
        (None, None) => None,
    };
    let bound_cert = parsed(Field::BoundCert, input.bound_cert_sha256, parse_sha256_hex)?;
    let rate_limit = parsed(Field::RateLimit, input.rate_limit, Rate::parse)?;
    let quota = parsed(Field::Quota, input.quota, Quota::parse)?;
    let mut scopes = input.scopes;
    scopes.extend(input.roles.iter().map(|r| role_grant(r)));
    Ok(NewToken {
        user: input.user,
        label: input.label,
        scopes,
        expires_at,
        bound_cert,
        rate_limit,
        quota,
    })
}

/// Checks every field of a change, in this order: label, expiry, rate limit, quota. An empty input
/// gives an empty patch (the caller says which fields it could have given).
pub fn token_patch(input: PatchInput) -> Result<TokenPatch, FieldError> {
    if let Some(l) = &input.label {
        on(Field::Label, check_label(l))?;
    }
    let expires_at = match (input.expires_in.as_deref(), input.expires_at) {
        (Some(_), Some(_)) => on(Field::ExpiresAt, Err(BOTH_EXPIRIES.into()))?,
        (Some(d), None) => Some(on(Field::ExpiresIn, expiry(Some(d), None))?),
        (None, Some(None)) => Some(None),
        (None, Some(Some(t))) => Some(on(Field::ExpiresAt, expiry(None, Some(&t)))?),
        (None, None) => None,
    };
    // Absent: unchanged; `Some(None)`: removed; a value: parsed.
    fn limit<T>(
        field: Field,
        v: Option<Option<String>>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<Option<T>>, FieldError> {
        v.map(|v| parsed(field, v, parse)).transpose()
    }
    Ok(TokenPatch {
        label: input.label,
        expires_at,
        rate_limit: limit(Field::RateLimit, input.rate_limit, Rate::parse)?,
        quota: limit(Field::Quota, input.quota, Quota::parse)?,
    })
}

const BOTH_EXPIRIES: &str = "give expires_in or expires_at, not both";

fn parsed<T>(
    field: Field,
    v: Option<String>,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, FieldError> {
    on(field, v.as_deref().map(parse).transpose())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        let mut r = Roles::new();
        r.insert("reader".into(), vec!["telemetry:read".into()]);
        r
    }

    fn base() -> NewInput {
        NewInput {
            user: "alice".into(),
            label: "hive".into(),
            ..NewInput::default()
        }
    }

    #[test]
    fn a_good_new_token_carries_every_field() {
        let new = new_token(
            NewInput {
                scopes: vec!["telemetry:write".into()],
                roles: vec!["reader".into()],
                expires_in: Some("1h".into()),
                bound_cert_sha256: Some("ab".repeat(32)),
                rate_limit: Some("10/s".into()),
                quota: Some("100/day".into()),
                ..base()
            },
            &roles(),
        )
        .unwrap();
        assert_eq!(new.scopes, ["telemetry:write", "@reader"]);
        assert!(new.expires_at.is_some() && new.rate_limit.is_some() && new.quota.is_some());
        assert_eq!(new.bound_cert, Some([0xab; 32]));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(NewInput, &str)> = vec![
            (
                NewInput {
                    user: "a b".into(),
                    ..base()
                },
                "user: user \"a b\" must be",
            ),
            (
                NewInput {
                    label: " x".into(),
                    ..base()
                },
                "label: label must be",
            ),
            (
                NewInput {
                    scopes: vec!["a\"b".into()],
                    ..base()
                },
                "scopes: \"a\\\"b\" is not a scope",
            ),
            (
                NewInput {
                    roles: vec!["writer".into()],
                    ..base()
                },
                "roles: unknown role \"writer\" (the [roles] of the configuration define: reader)",
            ),
            (
                NewInput {
                    expires_in: Some("1h".into()),
                    expires_at: Some("2999-01-01T00:00:00Z".into()),
                    ..base()
                },
                "expires_at: give expires_in or expires_at, not both",
            ),
            (
                NewInput {
                    expires_in: Some("0s".into()),
                    ..base()
                },
                "expires_in: expiry must be at least 1s away",
            ),
            (
                NewInput {
                    bound_cert_sha256: Some("abc".into()),
                    ..base()
                },
                "bound_cert_sha256: \"abc\" is not a SHA-256 thumbprint",
            ),
            (
                NewInput {
                    rate_limit: Some("often".into()),
                    ..base()
                },
                "rate_limit: ",
            ),
            (
                NewInput {
                    quota: Some("often".into()),
                    ..base()
                },
                "quota: \"often\" is not a quota",
            ),
        ];
        for (input, want) in cases {
            let e = new_token(input.clone(), &roles()).unwrap_err().for_api();
            assert!(e.starts_with(want), "{input:?}: {e}");
        }
    }

    #[test]
    fn a_patch_removes_changes_or_keeps() {
        let p = token_patch(PatchInput {
            expires_at: Some(None),
            rate_limit: Some(None),
            quota: Some(Some("5/month".into())),
            ..PatchInput::default()
        })
        .unwrap();
        assert_eq!(p.expires_at, Some(None));
        assert_eq!(p.rate_limit, Some(None));
        assert!(matches!(p.quota, Some(Some(_))));
        assert_eq!(p.label, None);
        assert!(token_patch(PatchInput::default()).unwrap().is_empty());
        for (input, want) in [
            (
                PatchInput {
                    label: Some("".into()),
                    ..PatchInput::default()
                },
                "label: label must be",
            ),
            (
                PatchInput {
                    expires_in: Some("1h".into()),
                    expires_at: Some(None),
                    ..PatchInput::default()
                },
                "expires_at: give expires_in or expires_at, not both",
            ),
            (
                PatchInput {
                    rate_limit: Some(Some("x".into())),
                    ..PatchInput::default()
                },
                "rate_limit: ",
            ),
        ] {
            let e = token_patch(input.clone()).unwrap_err().for_api();
            assert!(e.starts_with(want), "{input:?}: {e}");
        }
    }

    #[test]
    fn each_side_names_the_field_its_own_way_before_the_same_problem() {
        let e = new_token(
            NewInput {
                rate_limit: Some("often".into()),
                ..base()
            },
            &roles(),
        )
        .unwrap_err();
        assert_eq!(e.field, Field::RateLimit);
        assert_eq!(e.for_cli(), format!("--rate-limit: {}", e.problem));
        assert_eq!(e.for_api(), format!("rate_limit: {}", e.problem));
    }
}

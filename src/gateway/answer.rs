//! The one shape of every JSON error answer the gateway writes, on every listener and door:
//! `{"error": code, "detail": text}`, plus `scope` (the scope a 403 names) and `request_id` (the
//! request's `x-request-id`) when there are. The decision's refusals, the admin API's errors, the admin
//! listener's own answers and the secret-scanning door all write their bodies here, so a client parses
//! one shape whichever part of the gateway answered.

/// An error answer's body fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorBody<'a> {
    /// The machine-readable code (`invalid_token`, `rate_limited`, `not_found`, ...).
    pub error: &'a str,
    /// What happened, for a person: never a credential.
    pub detail: &'a str,
    /// The scope a 403 names.
    pub scope: Option<&'a str>,
    /// The request's id.
    pub request_id: Option<&'a str>,
}

impl<'a> ErrorBody<'a> {
    pub fn new(error: &'a str, detail: &'a str) -> ErrorBody<'a> {
        ErrorBody {
            error,
            detail,
            ..ErrorBody::default()
        }
    }

    /// The JSON text.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = serde_json::json!({ "error": self.error, "detail": self.detail });
        if let Some(id) = self.request_id {
            v["request_id"] = id.into();
        }
        if let Some(s) = self.scope {
            v["scope"] = s.into();
        }
        serde_json::to_vec(&v).expect("json")
    }
}

/// `{"error", "detail"}`.
pub fn error_body(error: &str, detail: &str) -> Vec<u8> {
    ErrorBody::new(error, detail).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shape_with_optional_scope_and_request_id() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_body("not_found", "no \"route\"")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "not_found", "detail": "no \"route\""})
        );
        let full = ErrorBody {
            scope: Some("video:upload"),
            request_id: Some("abc"),
            ..ErrorBody::new("insufficient_scope", "needs video:upload")
        };
        let v: serde_json::Value = serde_json::from_slice(&full.to_vec()).unwrap();
        assert_eq!(v["scope"], "video:upload");
        assert_eq!(v["request_id"], "abc");
    }
}

//! The verify listener's counters: `tokengate_verify_answers_total{door, outcome}`, where `door` is
//! `forward` (forward auth), `mqtt_authn`, `mqtt_authz` or `mqtt_revoked`, and `outcome` the decision's
//! auth outcome (`ok`, `public`, `missing`, `invalid`, `revoked`, ...) for forward auth, `allow`/`deny`
//! for MQTT, or `untrusted` / `bad_request` for askers refused before any decision.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The doors of the verify listener (label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyDoor {
    Forward,
    MqttAuthn,
    MqttAuthz,
    MqttRevoked,
}

impl VerifyDoor {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyDoor::Forward => "forward",
            VerifyDoor::MqttAuthn => "mqtt_authn",
            VerifyDoor::MqttAuthz => "mqtt_authz",
            VerifyDoor::MqttRevoked => "mqtt_revoked",
        }
    }
}

/// Every outcome label an answer may carry (the auth outcomes, then the verify listener's own).
pub const OUTCOMES: [&str; 17] = [
    "ok",
    "missing",
    "invalid",
    "expired",
    "revoked",
    "insufficient_scope",
    "throttled",
    "cert_mismatch",
    "rate_limited",
    "quota_exceeded",
    "public",
    "none",
    "untrusted",
    "bad_request",
    "allow",
    "deny",
    "other",
];

const DOORS: [VerifyDoor; 4] = [
    VerifyDoor::Forward,
    VerifyDoor::MqttAuthn,
    VerifyDoor::MqttAuthz,
    VerifyDoor::MqttRevoked,
];

/// Answers of the verify listener by door and outcome, resolved once (no label lookup, no lock per
/// answer).
#[derive(Clone)]
pub struct VerifyMetrics {
    /// `[door][outcome]`, in the orders of `DOORS` and [`OUTCOMES`].
    answers: Vec<Vec<IntCounter>>,
}

impl VerifyMetrics {
    /// Registers the collectors in `registry` (once per process).
    pub fn register(registry: &Registry) -> VerifyMetrics {
        let vec = IntCounterVec::new(
            Opts::new(
                "tokengate_verify_answers_total",
                "Answers of the verify listener, by door (forward, mqtt_authn, mqtt_authz, mqtt_revoked) and outcome",
            ),
            &["door", "outcome"],
        )
        .expect("metric");
        registry
            .register(Box::new(vec.clone()))
            .expect("register metric");
        VerifyMetrics {
            answers: DOORS
                .iter()
                .map(|d| {
                    OUTCOMES
                        .iter()
                        .map(|o| vec.with_label_values(&[d.as_str(), o]))
                        .collect()
                })
                .collect(),
        }
    }

    /// Counts one answer (`outcome` from [`OUTCOMES`]; anything else counts as `other`).
    pub fn answered(&self, door: VerifyDoor, outcome: &str) {
        let d = DOORS.iter().position(|x| *x == door).unwrap_or(0);
        let o = OUTCOMES
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        self.answers[d][o].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_door_and_outcome() {
        let r = Registry::new();
        let m = VerifyMetrics::register(&r);
        m.answered(VerifyDoor::Forward, "ok");
        m.answered(VerifyDoor::MqttAuthz, "deny");
        m.answered(VerifyDoor::MqttAuthz, "deny");
        m.answered(VerifyDoor::MqttRevoked, "surprise");
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("tokengate_verify_answers_total{door=\"mqtt_authz\",outcome=\"deny\"} 2"),
            "{text}"
        );
    }
}

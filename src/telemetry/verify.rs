//! The verify listener's counters: `tokengate_verify_answers_total{door, outcome}`, where `door` is
//! `forward` (forward auth), `mqtt_authn`, `mqtt_authz` or `mqtt_revoked`, and `outcome` the decision's
//! auth outcome (`ok`, `public`, `missing`, `invalid`, `revoked`, ...) for forward auth, `allow`/`deny`
//! for MQTT, or `untrusted` / `bad_request` for askers refused before any decision.

use prometheus::{IntCounterVec, Opts, Registry};

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

/// Answers of the verify listener by door and outcome.
#[derive(Clone)]
pub struct VerifyMetrics {
    answers: IntCounterVec,
}

impl VerifyMetrics {
    /// Registers the collectors in `registry` (once per process).
    pub fn register(registry: &Registry) -> VerifyMetrics {
        let answers = IntCounterVec::new(
            Opts::new(
                "tokengate_verify_answers_total",
                "Answers of the verify listener, by door (forward, mqtt_authn, mqtt_authz, mqtt_revoked) and outcome",
            ),
            &["door", "outcome"],
        )
        .expect("metric");
        registry
            .register(Box::new(answers.clone()))
            .expect("register metric");
        VerifyMetrics { answers }
    }

    /// Counts one answer (`outcome` from a fixed set).
    pub fn answered(&self, door: VerifyDoor, outcome: &str) {
        self.answers
            .with_label_values(&[door.as_str(), outcome])
            .inc();
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

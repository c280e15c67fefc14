//! Step 2, run by the receivers (so parsing and hashing overlap the writer's database work): each
//! delivery becomes a ledger hit, a masked login row, or a quarantine record.

use crate::event::{self, Reject, RejectReason};
use crate::sink::{NewLogin, NewQuarantined};
use crate::source::Delivery;

use super::Pipeline;

/// Why a delivery is quarantined, with the field to blame (a body field, an attribute, an envelope member).
pub(super) struct Rejected {
    pub reason: RejectReason,
    pub field: Option<String>,
    pub detail: String,
}

impl From<Reject> for Rejected {
    fn from(reject: Reject) -> Self {
        Rejected { reason: reject.reason, field: reject.field.map(str::to_owned), detail: reject.detail }
    }
}

/// What the receiver decided about one delivery.
pub(super) enum Verdict {
    /// Its key is in the ledger: committed before, unless Postgres does not confirm it (a restored
    /// database); then the writer judges it after all.
    Known,
    Login(NewLogin),
    Reject(NewQuarantined, RejectReason),
}

/// A delivery with its verdict, as the writer sees it. The body is kept for logins (should Postgres
/// refuse the row, or its key belong to another body, the quarantine record needs the masked body)
/// and ledger hits (judged after all if Postgres does not confirm them); otherwise it is dropped.
pub(super) struct Item {
    pub delivery: Delivery,
    /// Hex HMAC of the body: what the key's claim compares.
    pub fingerprint: String,
    pub verdict: Verdict,
}

impl<S, K> Pipeline<S, K> {
    pub(super) fn triage(&self, mut delivery: Delivery) -> Item {
        let fingerprint = self.masker.token_bytes(&delivery.body);
        let verdict = if delivery.flaw.is_none() && self.ledger.contains(&delivery.message_id) {
            Verdict::Known
        } else {
            self.judge(&delivery, &fingerprint)
        };
        if matches!(verdict, Verdict::Reject(..)) {
            delivery.body = Vec::new();
        }
        Item { delivery, fingerprint, verdict }
    }

    /// Parses, validates and masks one delivery (a flawed one is a reject whatever its body).
    pub(super) fn judge(&self, delivery: &Delivery, fingerprint: &str) -> Verdict {
        if let Some(flaw) = &delivery.flaw {
            let reject = Rejected { reason: flaw.reason, field: Some(flaw.field.clone()), detail: flaw.detail.clone() };
            return Verdict::Reject(self.quarantine_record(delivery, fingerprint, reject), flaw.reason);
        }
        match event::parse(&delivery.body, &self.rules) {
            Ok(login) => {
                self.stats.extra_fields(&login.extra_fields);
                Verdict::Login(NewLogin {
                    message_id: delivery.message_id.clone(),
                    masked_ip: self.masker.token(&login.ip),
                    masked_device_id: self.masker.token(&login.device_id),
                    ip_sealed: self.sealer.as_ref().map(|s| s.seal(&login.ip)),
                    device_id_sealed: self.sealer.as_ref().map(|s| s.seal(&login.device_id)),
                    seal_key_id: self.sealer.as_ref().map(|s| s.key_id().to_owned()),
                    user_id: login.user_id,
                    device_type: login.device_type,
                    locale: login.locale,
                    app_version: login.app_version,
                    create_date: delivery.sent_at.date_naive(),
                    sent_at: delivery.sent_at,
                    mask_key_id: self.masker.key_id().to_owned(),
                    body_fingerprint: fingerprint.to_owned(),
                })
            }
            Err(reject) => {
                let reason = reject.reason;
                Verdict::Reject(self.quarantine_record(delivery, fingerprint, reject.into()), reason)
            }
        }
    }

    /// The quarantine record of a rejected delivery: reason, field, and the body with PII masked.
    pub(super) fn quarantine_record(&self, delivery: &Delivery, fingerprint: &str, reject: Rejected) -> NewQuarantined {
        tracing::info!(
            sqs.message_id = %delivery.message_id, reason = %reject.reason, field = reject.field,
            disposition = "reject", "message quarantined: {}", reject.detail
        );
        self.record_of(delivery, fingerprint, reject)
    }

    /// The record itself, under the delivery's message id; the caller logs why.
    pub(super) fn record_of(&self, delivery: &Delivery, fingerprint: &str, reject: Rejected) -> NewQuarantined {
        NewQuarantined {
            message_id: delivery.message_id.clone(),
            reason: reject.reason.as_str().to_owned(),
            field: reject.field,
            detail: reject.detail,
            // A body over a cap is not read again: only its HMAC and length are kept.
            masked_body: if reject.reason.is_over_a_cap() {
                None
            } else {
                self.masker.mask_body(&delivery.body, &self.rules)
            },
            body_hmac: fingerprint.to_owned(),
            body_bytes: delivery.body.len() as i32,
            receive_count: delivery.receive_count,
            sent_at: delivery.sent_at,
            mask_key_id: self.masker.key_id().to_owned(),
            // With sealing, the raw body is kept recoverable for the private key's holders only.
            body_sealed: self.sealer.as_ref().map(|s| s.seal_bytes(&delivery.body)),
            seal_key_id: self.sealer.as_ref().map(|s| s.key_id().to_owned()),
        }
    }
}

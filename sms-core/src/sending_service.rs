//! The SMS sending platform's rules (`sendapi`): signatures and templates
//! with their audit workflow, send tasks charged up front and refunded per
//! failed recipient, and the worker that drains tasks through a
//! [`MessageGateway`] with bounded concurrency. Queued work lives in the
//! store, so a restart resumes it.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tokio::sync::Notify;

use crate::billing::Billing;
use crate::carrier::Receipt;
use crate::clock::Clock;
use crate::error::{CoreError, StoreError};
use crate::gateway::{DeliveryError, GatewayAccepted, GatewayMessage, MessageGateway};
use crate::ledger::{Amount, LedgerOp};
use crate::phone::PhoneNumber;
use crate::random::RandomSource;
use crate::sending::{
    render_send, segments, template_params, AuditStatus, ReceiptOutcome, ReceiptUpdate,
    RecipientStatus, SendTask, Signature, TaskState, Template, TemplateType,
};
use crate::store::{EntryQuery, SignatureWrite, Stores, TemplateWrite, WriteOutcome};
use crate::user::UserId;

/// Sending rules; every number is configuration with these defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendPolicy {
    /// Price of one segment to one recipient (1 balance unit).
    pub unit_price: Amount,
    /// Recipients per task (10,000).
    pub max_recipients: usize,
    /// Messages offered to the gateway at once (16).
    pub concurrency: usize,
    /// Statuses written per store call (500).
    pub status_batch: usize,
    /// Longest signature, characters (32).
    pub max_signature_chars: usize,
    /// Longest signature source, characters (64).
    pub max_source_chars: usize,
    /// Most proof pictures (10), each at most 1,024 characters.
    pub max_pics: usize,
    /// Longest template name (64).
    pub max_name_chars: usize,
    /// Longest template content (500).
    pub max_content_chars: usize,
    /// Longest template description (200).
    pub max_description_chars: usize,
    /// A task stuck in `Created` this long (a crash between creating it and
    /// charging it) is reconciled by the worker (60 s).
    pub created_grace_secs: i64,
}

impl Default for SendPolicy {
    fn default() -> Self {
        Self {
            unit_price: 1,
            max_recipients: 10_000,
            concurrency: 16,
            status_batch: 500,
            max_signature_chars: 32,
            max_source_chars: 64,
            max_pics: 10,
            max_name_chars: 64,
            max_content_chars: 500,
            max_description_chars: 200,
            created_grace_secs: 60,
        }
    }
}

/// A signature as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInput {
    /// The text.
    pub text: String,
    /// Its source.
    pub source: String,
    /// Proof pictures.
    pub pics: Vec<String>,
}

/// A template as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInput {
    /// The signature it belongs to.
    pub sign_id: i64,
    /// Name.
    pub name: String,
    /// Content.
    pub content: String,
    /// Type number (1, 2, 3).
    pub kind: i64,
    /// Why.
    pub description: String,
}

/// Optional paging: `page` from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Page number, from 1.
    pub page: usize,
    /// Items per page.
    pub page_size: usize,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// All items.
    pub total: usize,
    /// This page (1 without paging).
    pub page: usize,
    /// Page size (`total` without paging).
    pub page_size: usize,
}

fn paginate<T>(all: Vec<T>, req: Option<PageRequest>) -> Page<T> {
    let total = all.len();
    match req {
        None => Page {
            items: all,
            total,
            page: 1,
            page_size: total,
        },
        Some(p) => {
            let start = p.page.saturating_sub(1).saturating_mul(p.page_size);
            Page {
                items: all.into_iter().skip(start).take(p.page_size).collect(),
                total,
                page: p.page,
                page_size: p.page_size,
            }
        }
    }
}

/// What one pass of the worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkReport {
    /// Messages accepted by the gateway.
    pub sent: usize,
    /// Messages refused (refunded).
    pub failed: usize,
    /// Messages left for a later pass (gateway unavailable).
    pub deferred: usize,
    /// Tasks finished.
    pub finished: usize,
}

/// The sending service.
#[derive(Debug, Clone)]
pub struct SendService {
    stores: Stores,
    billing: Arc<Billing>,
    gateway: Arc<dyn MessageGateway>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
    policy: SendPolicy,
    wake: Arc<Notify>,
}

/// The audit state and reason a review leaves.
fn verdict(passed: bool, reason: &str) -> (AuditStatus, String) {
    if passed {
        (AuditStatus::Passed, String::new())
    } else {
        (AuditStatus::Rejected, reason.to_owned())
    }
}

fn chars_within(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

impl SendService {
    /// A sending service over the ports.
    pub fn new(
        stores: Stores,
        billing: Arc<Billing>,
        gateway: Arc<dyn MessageGateway>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn RandomSource>,
        policy: SendPolicy,
    ) -> Self {
        Self {
            stores,
            billing,
            gateway,
            clock,
            rng,
            policy,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &SendPolicy {
        &self.policy
    }

    /// Resolves when new work was queued (for the worker loop).
    pub async fn work_queued(&self) {
        self.wake.notified().await
    }

    fn check_signature(&self, s: &SignatureInput) -> Result<(), CoreError> {
        let p = &self.policy;
        let ok = chars_within(&s.text, p.max_signature_chars)
            && !s.text.contains(['【', '】'])
            && chars_within(&s.source, p.max_source_chars)
            && s.pics.len() <= p.max_pics
            && s.pics.iter().all(|x| x.chars().count() <= 1024);
        if ok {
            Ok(())
        } else {
            Err(CoreError::InvalidParameter("signature"))
        }
    }

    fn check_template(&self, t: &TemplateInput) -> Result<TemplateType, CoreError> {
        let p = &self.policy;
        if !(chars_within(&t.name, p.max_name_chars)
            && chars_within(&t.content, p.max_content_chars)
            && chars_within(&t.description, p.max_description_chars))
        {
            return Err(CoreError::TemplateField);
        }
        TemplateType::from_number(t.kind).ok_or(CoreError::TemplateType)
    }

    async fn owned_signature(&self, owner: &UserId, id: i64) -> Result<Signature, CoreError> {
        self.stores
            .sending
            .signature(id)
            .await?
            .filter(|s| &s.owner == owner)
            .ok_or(CoreError::SignatureNotOwned)
    }

    async fn template_of(&self, sig: &Signature, id: i64) -> Result<Template, CoreError> {
        self.stores
            .sending
            .template(id)
            .await?
            .filter(|t| t.owner == sig.owner && t.sign_id == sig.id)
            .ok_or(CoreError::TemplateNotOfSignature)
    }

    /// Creates a signature, pending review.
    pub async fn create_signature(
        &self,
        owner: &UserId,
        input: SignatureInput,
    ) -> Result<Signature, CoreError> {
        self.check_signature(&input)?;
        let now = self.clock.unix();
        let created = self
            .stores
            .sending
            .write_signature(SignatureWrite::Create(Signature {
                id: 0,
                owner: owner.clone(),
                text: input.text,
                source: input.source,
                pics: input.pics,
                audit: AuditStatus::Pending,
                reject_reason: String::new(),
                created_at: now,
                updated_at: now,
            }))
            .await?;
        match created {
            WriteOutcome::Created(sig) => Ok(sig),
            _ => Err(StoreError::Backend(
                "a signature create answered without the signature".into(),
            )
            .into()),
        }
    }

    /// The owner's signatures.
    pub async fn signatures(
        &self,
        owner: &UserId,
        page: Option<PageRequest>,
    ) -> Result<Page<Signature>, CoreError> {
        Ok(paginate(
            self.stores.sending.signatures_of(owner).await?,
            page,
        ))
    }

    /// Edits a signature (pending or rejected; back to pending). Ownership
    /// ([`CoreError::SignatureNotOwned`]) is checked before state
    /// ([`CoreError::SignatureLocked`]).
    pub async fn edit_signature(
        &self,
        owner: &UserId,
        id: i64,
        input: SignatureInput,
    ) -> Result<Signature, CoreError> {
        self.check_signature(&input)?;
        loop {
            let old = self.owned_signature(owner, id).await?;
            if !old.audit.editable() {
                return Err(CoreError::SignatureLocked);
            }
            let new = Signature {
                text: input.text.clone(),
                source: input.source.clone(),
                pics: input.pics.clone(),
                audit: AuditStatus::Pending,
                reject_reason: String::new(),
                updated_at: self.clock.unix(),
                ..old.clone()
            };
            let write = SignatureWrite::Replace {
                old,
                new: new.clone(),
            };
            if self.stores.sending.write_signature(write).await? == WriteOutcome::Replaced {
                return Ok(new);
            }
        }
    }

    /// Deletes a signature without templates.
    pub async fn delete_signature(&self, owner: &UserId, id: i64) -> Result<(), CoreError> {
        self.owned_signature(owner, id).await?;
        match self
            .stores
            .sending
            .write_signature(SignatureWrite::Delete(id))
            .await?
        {
            WriteOutcome::Deleted => Ok(()),
            WriteOutcome::InUse => Err(CoreError::SignatureInUse),
            _ => Err(CoreError::SignatureNotOwned),
        }
    }

    /// What waits for root's review: pending signatures and templates of
    /// every owner, lowest id first, at most `max` of each.
    pub async fn pending_reviews(
        &self,
        max: usize,
    ) -> Result<(Vec<Signature>, Vec<Template>), CoreError> {
        Ok(self.stores.sending.pending_reviews(max).await?)
    }

    /// Root's review of a pending signature.
    pub async fn review_signature(
        &self,
        id: i64,
        passed: bool,
        reason: &str,
    ) -> Result<(), CoreError> {
        loop {
            let old = self
                .stores
                .sending
                .signature(id)
                .await?
                .ok_or(CoreError::InvalidParameter("sign_id"))?;
            if old.audit != AuditStatus::Pending {
                return Err(CoreError::SignatureNotPending);
            }
            let (audit, reject_reason) = verdict(passed, reason);
            let new = Signature {
                audit,
                reject_reason,
                updated_at: self.clock.unix(),
                ..old.clone()
            };
            let write = SignatureWrite::Replace { old, new };
            if self.stores.sending.write_signature(write).await? == WriteOutcome::Replaced {
                return Ok(());
            }
        }
    }

    /// Creates a template, pending review, on an owned signature (which may
    /// itself still be pending). Checks fields ([`CoreError::TemplateField`]),
    /// type ([`CoreError::TemplateType`]), then ownership.
    pub async fn create_template(
        &self,
        owner: &UserId,
        input: TemplateInput,
    ) -> Result<Template, CoreError> {
        let kind = self.check_template(&input)?;
        let sig = self.owned_signature(owner, input.sign_id).await?;
        let now = self.clock.unix();
        let created = self
            .stores
            .sending
            .write_template(TemplateWrite::Create(Template {
                id: 0,
                owner: owner.clone(),
                sign_id: sig.id,
                name: input.name,
                content: input.content,
                kind,
                description: input.description,
                audit: AuditStatus::Pending,
                reject_reason: String::new(),
                created_at: now,
                updated_at: now,
            }))
            .await?;
        match created {
            WriteOutcome::Created(template) => Ok(template),
            _ => Err(CoreError::SignatureNotOwned),
        }
    }

    /// The owner's templates.
    pub async fn templates(
        &self,
        owner: &UserId,
        page: Option<PageRequest>,
    ) -> Result<Page<Template>, CoreError> {
        Ok(paginate(
            self.stores.sending.templates_of(owner).await?,
            page,
        ))
    }

    /// Edits a template (pending or rejected; back to pending): fields, type,
    /// the signature's ownership, the template belonging to it, then state
    /// ([`CoreError::TemplateLocked`]). The template may move to another
    /// owned signature.
    pub async fn edit_template(
        &self,
        owner: &UserId,
        temp_id: i64,
        input: TemplateInput,
    ) -> Result<Template, CoreError> {
        let kind = self.check_template(&input)?;
        let sig = self.owned_signature(owner, input.sign_id).await?;
        loop {
            let old = self
                .stores
                .sending
                .template(temp_id)
                .await?
                .filter(|t| &t.owner == owner)
                .ok_or(CoreError::TemplateNotOfSignature)?;
            if !old.audit.editable() {
                return Err(CoreError::TemplateLocked);
            }
            let new = Template {
                sign_id: sig.id,
                name: input.name.clone(),
                content: input.content.clone(),
                kind,
                description: input.description.clone(),
                audit: AuditStatus::Pending,
                reject_reason: String::new(),
                updated_at: self.clock.unix(),
                ..old.clone()
            };
            let write = TemplateWrite::Replace {
                old,
                new: new.clone(),
            };
            if self.stores.sending.write_template(write).await? == WriteOutcome::Replaced {
                return Ok(new);
            }
            // The signature may have been deleted meanwhile.
            self.owned_signature(owner, input.sign_id).await?;
        }
    }

    /// Deletes a template of an owned signature.
    pub async fn delete_template(
        &self,
        owner: &UserId,
        sign_id: i64,
        temp_id: i64,
    ) -> Result<(), CoreError> {
        let sig = self.owned_signature(owner, sign_id).await?;
        self.template_of(&sig, temp_id).await?;
        match self
            .stores
            .sending
            .write_template(TemplateWrite::Delete(temp_id))
            .await?
        {
            WriteOutcome::Deleted => Ok(()),
            _ => Err(CoreError::TemplateNotOfSignature),
        }
    }

    /// Root's review of a pending template.
    pub async fn review_template(
        &self,
        id: i64,
        passed: bool,
        reason: &str,
    ) -> Result<(), CoreError> {
        loop {
            let old = self
                .stores
                .sending
                .template(id)
                .await?
                .ok_or(CoreError::InvalidParameter("temp_id"))?;
            if old.audit != AuditStatus::Pending {
                return Err(CoreError::TemplateLocked);
            }
            let (audit, reject_reason) = verdict(passed, reason);
            let new = Template {
                audit,
                reject_reason,
                updated_at: self.clock.unix(),
                ..old.clone()
            };
            let write = TemplateWrite::Replace { old, new };
            if self.stores.sending.write_template(write).await? == WriteOutcome::Replaced {
                return Ok(());
            }
        }
    }

    fn new_uuid(&self) -> String {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Queues a send task and charges it. Checks, in order: the signature
    /// owned ([`CoreError::SignatureNotOwned`]), the template of it
    /// ([`CoreError::TemplateNotOfSignature`]), signature passed
    /// ([`CoreError::SignatureNotPassed`]), template passed
    /// ([`CoreError::TemplateNotPassed`]), 1 to 10,000 valid mobiles
    /// ([`CoreError::InvalidMobiles`]), the balance for recipients ×
    /// segments ([`CoreError::InsufficientBalance`]). Returns the task uuid.
    pub async fn send(
        &self,
        owner: &UserId,
        sign_id: i64,
        temp_id: i64,
        mobiles: &[String],
        params: &HashMap<String, String>,
    ) -> Result<String, CoreError> {
        let sig = self.owned_signature(owner, sign_id).await?;
        let template = self.template_of(&sig, temp_id).await?;
        if sig.audit != AuditStatus::Passed {
            return Err(CoreError::SignatureNotPassed);
        }
        if template.audit != AuditStatus::Passed {
            return Err(CoreError::TemplateNotPassed);
        }
        if mobiles.is_empty() || mobiles.len() > self.policy.max_recipients {
            return Err(CoreError::InvalidMobiles);
        }
        let mut recipients = mobiles
            .iter()
            .map(|m| PhoneNumber::parse_cn_mobile(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CoreError::InvalidMobiles)?;
        // One message per distinct number, however often (and in whatever
        // spelling) it is listed: a send is not a bombing tool.
        let mut seen = std::collections::HashSet::new();
        recipients.retain(|r| seen.insert(r.clone()));
        let text = render_send(&sig.text, &template, params)?;
        let now = self.clock.unix();
        let task = SendTask {
            uuid: self.new_uuid(),
            owner: owner.clone(),
            sign_id,
            temp_id,
            segments: segments(&text).count,
            text,
            unit_price: self.policy.unit_price,
            recipients,
            state: TaskState::Created,
            created_at: now,
            finished_at: None,
            params: template_params(&template.content, params),
        };
        self.stores.sending.create_task(task.clone()).await?;
        let cost = task.cost();
        if cost > 0 {
            if let Err(e) = self
                .billing
                .apply(owner, task.charge_op(), LedgerOp::Debit { amount: cost })
                .await
            {
                self.stores
                    .sending
                    .set_task_state(&task.uuid, TaskState::Created, TaskState::Cancelled, now)
                    .await?;
                return Err(e);
            }
        }
        self.stores
            .sending
            .set_task_state(&task.uuid, TaskState::Created, TaskState::Queued, now)
            .await?;
        self.wake.notify_one();
        Ok(task.uuid)
    }

    /// A task of the owner's, with each recipient's status.
    pub async fn task(
        &self,
        owner: &UserId,
        uuid: &str,
    ) -> Result<(SendTask, Vec<RecipientStatus>), CoreError> {
        let task = self
            .stores
            .sending
            .task(uuid)
            .await?
            .filter(|t| &t.owner == owner)
            .ok_or(CoreError::InvalidParameter("uuid"))?;
        let statuses = self.stores.sending.recipient_statuses(uuid).await?;
        Ok((task, statuses))
    }

    /// One pass over every open task: reconciles tasks stuck in `Created`,
    /// offers every pending recipient to the gateway (at most
    /// [`SendPolicy::concurrency`] at once), records outcomes in batches, and
    /// finishes tasks whose recipients are all final, refunding failures.
    pub async fn work_once(&self) -> Result<WorkReport, CoreError> {
        let mut report = WorkReport::default();
        for uuid in self.stores.sending.open_tasks().await? {
            let Some(task) = self.stores.sending.task(&uuid).await? else {
                continue;
            };
            match task.state {
                TaskState::Created => self.reconcile_created(&task).await?,
                TaskState::Queued => self.drive(&task, &mut report).await?,
                TaskState::Done | TaskState::Cancelled => {}
            }
        }
        Ok(report)
    }

    async fn reconcile_created(&self, task: &SendTask) -> Result<(), CoreError> {
        let now = self.clock.unix();
        if task
            .created_at
            .saturating_add(self.policy.created_grace_secs)
            > now
        {
            return Ok(()); // a send() may still be charging it
        }
        let charged = task.cost() == 0
            || !self
                .stores
                .ledger
                .entries(&EntryQuery::Op(task.charge_op()))
                .await?
                .is_empty();
        let to = if charged {
            TaskState::Queued
        } else {
            TaskState::Cancelled
        };
        self.stores
            .sending
            .set_task_state(&task.uuid, TaskState::Created, to, now)
            .await?;
        Ok(())
    }

    async fn drive(&self, task: &SendTask, report: &mut WorkReport) -> Result<(), CoreError> {
        let statuses = self.stores.sending.recipient_statuses(&task.uuid).await?;
        let pending: Vec<usize> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == RecipientStatus::Pending)
            .map(|(i, _)| i)
            .collect();
        let mut deferred = 0;
        for chunk in pending.chunks(self.policy.status_batch.max(1)) {
            let outcomes: Vec<(usize, Result<GatewayAccepted, DeliveryError>)> =
                stream::iter(chunk.iter().copied())
                    .map(|i| {
                        let msg = GatewayMessage {
                            idempotency_key: task.idempotency_key(i),
                            to: task.recipients[i].clone(),
                            text: task.text.clone(),
                            template_id: Some(task.temp_id),
                            params: task.params.clone(),
                            signature: task.signature_text().map(str::to_owned),
                        };
                        let gw = self.gateway.clone();
                        async move { (i, gw.deliver_accepted(&msg).await) }
                    })
                    .buffer_unordered(self.policy.concurrency.max(1))
                    .collect()
                    .await;
            let at = self.clock.unix();
            let mut updates = Vec::with_capacity(outcomes.len());
            for (i, r) in outcomes {
                match r {
                    Ok(a) => {
                        report.sent += 1;
                        updates.push((
                            i,
                            RecipientStatus::Sent {
                                gateway_id: a.id,
                                at,
                                carrier: a.carrier,
                            },
                        ));
                    }
                    Err(DeliveryError::Rejected(reason)) => {
                        report.failed += 1;
                        updates.push((i, RecipientStatus::Failed { reason, at }));
                    }
                    Err(DeliveryError::Unavailable(_)) => deferred += 1,
                }
            }
            self.stores
                .sending
                .record_statuses(&task.uuid, updates)
                .await?;
        }
        report.deferred += deferred;
        if deferred == 0 {
            self.finish(task).await?;
            report.finished += 1;
        }
        Ok(())
    }

    /// Applies a delivery receipt of carrier `carrier` (carriers.md C3):
    /// finds the recipient by the receipt's idempotency key (Aliyun
    /// `OutId`, Tencent `SessionContext`) or else by the carrier's message
    /// id, and has the store apply
    /// [`receipt_transition`](crate::sending::receipt_transition) with its refund
    /// in one step. A receipt for no known recipient (a code's, or one that
    /// came before its `Sent` status was written) is
    /// [`ReceiptOutcome::Unknown`].
    pub async fn apply_receipt(
        &self,
        carrier: &str,
        receipt: &Receipt,
    ) -> Result<ReceiptOutcome, CoreError> {
        let by_key = receipt
            .idempotency_key
            .as_deref()
            .and_then(SendTask::parse_idempotency_key)
            .map(|(uuid, i)| (uuid.to_owned(), i));
        let found = match by_key {
            Some(found) => Some(found),
            None => {
                self.stores
                    .sending
                    .recipient_by_gateway_id(carrier, &receipt.provider_id)
                    .await?
            }
        };
        let Some((uuid, index)) = found else {
            return Ok(ReceiptOutcome::Unknown);
        };
        let update = ReceiptUpdate {
            delivery: receipt.status,
            carrier: carrier.to_owned(),
            gateway_id: receipt.provider_id.clone(),
            carrier_code: receipt.carrier_code.clone(),
            at: self.clock.unix(),
        };
        Ok(self
            .stores
            .sending
            .apply_receipt(&uuid, index, update)
            .await?)
    }

    /// Ends a task whose recipients all left `Pending`, refunding in one
    /// ledger operation ([`SendTask::refund_op`]) the recipients refused
    /// at once (`Failed`); a failure a receipt reported was refunded when
    /// it was applied, under its own operation, so no recipient is
    /// refunded twice.
    async fn finish(&self, task: &SendTask) -> Result<(), CoreError> {
        let statuses = self.stores.sending.recipient_statuses(&task.uuid).await?;
        if statuses.contains(&RecipientStatus::Pending) {
            return Ok(());
        }
        let failed = statuses
            .iter()
            .filter(|s| matches!(s, RecipientStatus::Failed { .. }))
            .count() as Amount;
        let refund = failed * Amount::from(task.segments) * task.unit_price;
        if refund > 0 {
            self.billing
                .apply(
                    &task.owner,
                    task.refund_op(),
                    LedgerOp::Refund { amount: refund },
                )
                .await?;
        }
        self.stores
            .sending
            .set_task_state(
                &task.uuid,
                TaskState::Queued,
                TaskState::Done,
                self.clock.unix(),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "sending_service_tests.rs"]
mod tests;

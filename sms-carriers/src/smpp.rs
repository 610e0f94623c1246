//! SMPP 3.4 client on rusmpp: one `bind_transceiver` per carrier, kept by
//! a connection task that
//!
//! * sends `submit_sm` (GSM-7 or UCS-2, long messages in UDH-concatenated
//!   parts, [`crate::segment`]) with `registered_delivery` 1, keeping at
//!   most `window` requests awaiting their `submit_sm_resp`;
//! * sends `enquire_link` every `enquire_link_secs` and answers the
//!   SMSC's;
//! * answers `deliver_sm` and turns receipts (`id:… stat:… err:…`) into
//!   [`SmppReceipt`]s, matched by the message id of `submit_sm_resp`; a
//!   multi-part message is `delivered` when every part is and `failed` as
//!   soon as one part fails;
//! * reconnects with exponential backoff (from `reconnect_secs`, doubling,
//!   at most 60 s) when the connection drops; requests awaiting a response
//!   then fail as transient and maybe sent.
//!
//! `ESME_RTHROTTLED`, `ESME_RMSGQFUL` and `ESME_RSYSERR` are transient; any
//! other error status is permanent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use rusmpp::pdus::{BindTransceiver, DeliverSmResp, SubmitSm};
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{EsmClass, InterfaceVersion, Npi, RegisteredDelivery, Ton};
use rusmpp::{Command, CommandStatus, Pdu};
use sms_core::carrier::{Accepted, Carrier, CarrierError, CarrierMessage, DeliveryStatus, Receipt};
use sms_core::sender::Channel;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::config::SmppConfig;
use crate::receipts;
use crate::segment;

/// A receipt from an SMPP carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmppReceipt {
    /// The carrier's name.
    pub carrier: String,
    /// The receipt; `provider_id` is the id [`Accepted`] gave (the first
    /// part's).
    pub receipt: Receipt,
}

struct Job {
    parts: Vec<SubmitSm>,
    reply: oneshot::Sender<Result<Accepted, CarrierError>>,
}

/// An SMPP carrier: a handle on its connection task.
#[derive(Debug)]
pub struct Smpp {
    name: String,
    source_addr: String,
    jobs: mpsc::Sender<JobBox>,
    bound: watch::Receiver<bool>,
    wait: Duration,
    reference: std::sync::atomic::AtomicU8,
}

/// A queued job (opaque in `Debug`).
struct JobBox(Job);

impl std::fmt::Debug for JobBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} parts)", self.0.parts.len())
    }
}

impl Smpp {
    /// Starts the connection task of carrier `name`; receipts go to
    /// `receipts` (dropped without one). Call inside a tokio runtime.
    pub fn start(
        name: impl Into<String>,
        config: SmppConfig,
        receipts: Option<mpsc::UnboundedSender<SmppReceipt>>,
    ) -> Self {
        let name = name.into();
        let (jobs, rx) = mpsc::channel(config.window.max(1) * 4);
        let (bound_tx, bound) = watch::channel(false);
        let wait = Duration::from_secs(config.response_timeout_secs);
        let source_addr = config.source_addr.clone();
        let task = Connection {
            name: name.clone(),
            config,
            receipts,
            bound: bound_tx,
            parents: HashMap::new(),
            early: Vec::new(),
        };
        tokio::spawn(task.run(rx));
        Self {
            name,
            source_addr,
            jobs,
            bound,
            wait,
            reference: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Waits until the bind is up (or `timeout` passes); whether it is.
    pub async fn wait_bound(&self, timeout: Duration) -> bool {
        let mut b = self.bound.clone();
        tokio::time::timeout(timeout, b.wait_for(|v| *v))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn submit_parts(&self, message: &CarrierMessage) -> Result<Vec<SubmitSm>, CarrierError> {
        let reference = self
            .reference
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let split = segment::split(&message.text, reference)
            .map_err(|e| CarrierError::permanent("segment", e.to_string()))?;
        let dest = message.to_e164().trim_start_matches('+').to_string();
        let bad = |what: &str| CarrierError::permanent("address", format!("bad {what}"));
        let source =
            COctetString::from_string(self.source_addr.clone()).map_err(|_| bad("source_addr"))?;
        let destination = COctetString::from_string(dest).map_err(|_| bad("destination"))?;
        let multi = split.parts.len() > 1;
        split
            .parts
            .into_iter()
            .map(|bytes| {
                let sm = SubmitSm::builder()
                    .source_addr_ton(Ton::Unknown)
                    .source_addr_npi(Npi::Unknown)
                    .source_addr(source.clone())
                    .dest_addr_ton(Ton::International)
                    .dest_addr_npi(Npi::Isdn)
                    .destination_addr(destination.clone())
                    .esm_class(EsmClass::default())
                    .registered_delivery(RegisteredDelivery::from(1u8))
                    .data_coding(split.data_coding)
                    .short_message(OctetString::from_vec(bytes).map_err(|_| bad("part"))?)
                    .build();
                Ok(if multi { sm.with_udhi_indicator() } else { sm })
            })
            .collect()
    }
}

#[async_trait]
impl Carrier for Smpp {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        if message.channel != Channel::Sms {
            return Err(CarrierError::Unsupported("smpp sends SMS only".into()));
        }
        let parts = self.submit_parts(message)?;
        if !self.wait_bound(self.wait).await {
            return Err(CarrierError::transient("unbound", "no SMPP bind"));
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(JobBox(Job { parts, reply }))
            .await
            .map_err(|_| CarrierError::transient("stopped", "SMPP task ended"))?;
        rx.await.unwrap_or_else(|_| {
            Err(CarrierError::Transient {
                code: "dropped".into(),
                detail: "connection lost".into(),
                maybe_sent: true,
            })
        })
    }
}

/// One job on the wire.
struct InFlight {
    reply: Option<oneshot::Sender<Result<Accepted, CarrierError>>>,
    ids: Vec<Option<String>>,
    waiting: usize,
    error: Option<CarrierError>,
}

/// Receipt aggregation of a multi-part message.
struct Parent {
    id: String,
    parts: Vec<String>,
    total: usize,
    delivered: usize,
    done: bool,
}

struct Connection {
    name: String,
    config: SmppConfig,
    receipts: Option<mpsc::UnboundedSender<SmppReceipt>>,
    bound: watch::Sender<bool>,
    /// Part message id → its multi-part message.
    parents: HashMap<String, Arc<std::sync::Mutex<Parent>>>,
    /// Receipts that came before the `submit_sm_resp` of their message's
    /// last part: replayed when it completes.
    early: Vec<Receipt>,
}

fn status_error(status: CommandStatus) -> CarrierError {
    let code = format!("0x{:08X}", u32::from(status));
    match status {
        CommandStatus::EsmeRthrottled
        | CommandStatus::EsmeRmsgqful
        | CommandStatus::EsmeRsyserr => CarrierError::transient(code, format!("{status:?}")),
        _ => CarrierError::permanent(code, format!("{status:?}")),
    }
}

type Wire = Framed<TcpStream, CommandCodec>;

impl Connection {
    async fn run(mut self, mut jobs: mpsc::Receiver<JobBox>) {
        let mut delay = Duration::from_secs(self.config.reconnect_secs.max(1));
        loop {
            match self.connect().await {
                Ok(wire) => {
                    delay = Duration::from_secs(self.config.reconnect_secs.max(1));
                    let _ = self.bound.send(true);
                    tracing::info!(carrier = %self.name, "smpp bound");
                    let closed = self.session(wire, &mut jobs).await;
                    let _ = self.bound.send(false);
                    if closed {
                        return;
                    }
                    tracing::warn!(carrier = %self.name, "smpp connection lost; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(carrier = %self.name, error = %e, "smpp bind failed");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }

    async fn connect(&self) -> Result<Wire, String> {
        let timeout = Duration::from_secs(self.config.response_timeout_secs);
        let stream = tokio::time::timeout(
            timeout,
            TcpStream::connect((self.config.host.as_str(), self.config.port)),
        )
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
        let mut wire = Framed::new(stream, CommandCodec::new());
        let bad = |k: &str| format!("bad {k}");
        let bind = BindTransceiver::builder()
            .system_id(
                COctetString::from_string(self.config.system_id.clone())
                    .map_err(|_| bad("system_id"))?,
            )
            .password(
                COctetString::from_string(self.config.password.expose().to_string())
                    .map_err(|_| bad("password"))?,
            )
            .system_type(
                COctetString::from_string(self.config.system_type.clone())
                    .map_err(|_| bad("system_type"))?,
            )
            .interface_version(InterfaceVersion::Smpp3_4)
            .addr_ton(Ton::Unknown)
            .addr_npi(Npi::Unknown)
            .address_range(COctetString::empty())
            .build();
        wire.send(Command::new(CommandStatus::EsmeRok, 1, bind))
            .await
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(timeout, async {
            while let Some(frame) = wire.next().await {
                let cmd = frame.map_err(|e| e.to_string())?;
                if let Some(Pdu::BindTransceiverResp(_)) = cmd.pdu() {
                    return Ok(cmd.status());
                }
            }
            Err("closed during bind".to_string())
        })
        .await
        .map_err(|_| "bind timeout".to_string())??;
        if answer != CommandStatus::EsmeRok {
            return Err(format!("bind refused: {answer:?}"));
        }
        Ok(wire)
    }

    /// Runs one bound session; `true` when every carrier handle is gone.
    async fn session(&mut self, mut wire: Wire, jobs: &mut mpsc::Receiver<JobBox>) -> bool {
        let window = self.config.window.max(1);
        let response_timeout = Duration::from_secs(self.config.response_timeout_secs);
        let mut seq: u32 = 1;
        let mut queue: VecDeque<(usize, usize, SubmitSm)> = VecDeque::new();
        let mut flights: HashMap<usize, InFlight> = HashMap::new();
        let mut next_flight = 0usize;
        // seq → (flight, part, sent at)
        let mut pending: HashMap<u32, (usize, usize, Instant)> = HashMap::new();
        let mut enquire = tokio::time::interval(Duration::from_secs(self.config.enquire_link_secs));
        enquire.tick().await;
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut closed = false;
        let result = loop {
            // Fill the window.
            while pending.len() < window {
                let Some((flight, part, sm)) = queue.pop_front() else {
                    break;
                };
                seq = seq.wrapping_add(1).max(2);
                if wire
                    .send(Command::new(CommandStatus::EsmeRok, seq, sm))
                    .await
                    .is_err()
                {
                    break;
                }
                pending.insert(seq, (flight, part, Instant::now()));
            }
            tokio::select! {
                job = jobs.recv(), if !closed && queue.len() < window * 4 => match job {
                    Some(JobBox(job)) => {
                        let n = job.parts.len();
                        let id = next_flight;
                        next_flight += 1;
                        flights.insert(id, InFlight { reply: Some(job.reply), ids: vec![None; n], waiting: n, error: None });
                        for (i, p) in job.parts.into_iter().enumerate() {
                            queue.push_back((id, i, p));
                        }
                    }
                    None => {
                        closed = true;
                        if flights.is_empty() {
                            let _ = wire.send(Command::new(CommandStatus::EsmeRok, seq.wrapping_add(1), Pdu::Unbind)).await;
                            break true;
                        }
                    }
                },
                frame = wire.next() => {
                    let Some(Ok(cmd)) = frame else { break false };
                    self.incoming(&mut wire, cmd, &mut pending, &mut flights).await;
                    if closed && flights.is_empty() {
                        break true;
                    }
                }
                _ = enquire.tick() => {
                    seq = seq.wrapping_add(1).max(2);
                    if wire.send(Command::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLink)).await.is_err() {
                        break false;
                    }
                }
                _ = sweep.tick() => {
                    let late: Vec<u32> = pending.iter().filter(|(_, (_, _, at))| at.elapsed() > response_timeout).map(|(s, _)| *s).collect();
                    for s in late {
                        if let Some((flight, part, _)) = pending.remove(&s) {
                            finish_part(&mut flights, flight, part, Err(CarrierError::Transient { code: "timeout".into(), detail: "no submit_sm_resp".into(), maybe_sent: true }));
                        }
                    }
                }
            }
        };
        // Whatever still waits fails as transient (maybe sent if on the wire).
        for (_, (flight, part, _)) in pending.drain() {
            finish_part(
                &mut flights,
                flight,
                part,
                Err(CarrierError::Transient {
                    code: "connection".into(),
                    detail: "connection lost".into(),
                    maybe_sent: true,
                }),
            );
        }
        for (flight, part, _) in queue.drain(..) {
            finish_part(
                &mut flights,
                flight,
                part,
                Err(CarrierError::transient("connection", "connection lost")),
            );
        }
        result
    }

    async fn incoming(
        &mut self,
        wire: &mut Wire,
        cmd: Command,
        pending: &mut HashMap<u32, (usize, usize, Instant)>,
        flights: &mut HashMap<usize, InFlight>,
    ) {
        let seq = cmd.sequence_number();
        match cmd.pdu() {
            Some(Pdu::SubmitSmResp(resp)) => {
                if let Some((flight, part, _)) = pending.remove(&seq) {
                    let outcome = if cmd.status() == CommandStatus::EsmeRok {
                        Ok(resp.message_id().as_str().to_string())
                    } else {
                        Err(status_error(cmd.status()))
                    };
                    if let Some(done) = finish_part(flights, flight, part, outcome) {
                        let mine: Vec<Receipt>;
                        (mine, self.early) =
                            std::mem::take(&mut self.early).into_iter().partition(|r| {
                                r.provider_id == done.provider_id
                                    || done.part_ids.contains(&r.provider_id)
                            });
                        if done.part_ids.len() > 1 {
                            let parent = Arc::new(std::sync::Mutex::new(Parent {
                                id: done.provider_id.clone(),
                                parts: done.part_ids.clone(),
                                total: done.part_ids.len(),
                                delivered: 0,
                                done: false,
                            }));
                            for id in &done.part_ids {
                                self.parents.insert(id.clone(), parent.clone());
                            }
                        }
                        for r in mine {
                            self.receipt(r);
                        }
                    }
                }
                self.flush_early(flights);
            }
            Some(Pdu::GenericNack) => {
                if let Some((flight, part, _)) = pending.remove(&seq) {
                    finish_part(flights, flight, part, Err(status_error(cmd.status())));
                }
                self.flush_early(flights);
            }
            Some(Pdu::DeliverSm(d)) => {
                let _ = wire
                    .send(Command::new(
                        CommandStatus::EsmeRok,
                        seq,
                        Pdu::DeliverSmResp(DeliverSmResp::default()),
                    ))
                    .await;
                let text = String::from_utf8_lossy(d.short_message().as_ref()).into_owned();
                if let Some(r) = receipts::smpp_text(&text) {
                    if !flights.is_empty() && !self.parents.contains_key(&r.provider_id) {
                        // Maybe a part of a message still being submitted.
                        self.early.push(r);
                    } else {
                        self.receipt(r);
                    }
                }
            }
            Some(Pdu::EnquireLink) => {
                let _ = wire
                    .send(Command::new(
                        CommandStatus::EsmeRok,
                        seq,
                        Pdu::EnquireLinkResp,
                    ))
                    .await;
            }
            Some(Pdu::Unbind) => {
                let _ = wire
                    .send(Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp))
                    .await;
            }
            _ => {}
        }
    }

    /// With nothing in flight, early receipts belong to no pending message:
    /// emit them as they are.
    fn flush_early(&mut self, flights: &HashMap<usize, InFlight>) {
        if flights.is_empty() {
            for r in std::mem::take(&mut self.early) {
                self.receipt(r);
            }
        }
    }

    /// Emits a receipt, aggregating the parts of a multi-part message.
    fn receipt(&mut self, mut r: Receipt) {
        if let Some(parent) = self.parents.get(&r.provider_id).cloned() {
            let mut p = parent.lock().unwrap_or_else(|e| e.into_inner());
            if p.done {
                return;
            }
            match r.status {
                DeliveryStatus::Delivered => {
                    p.delivered += 1;
                    if p.delivered < p.total {
                        return;
                    }
                }
                s if s.is_final() => {}
                _ => return,
            }
            p.done = true;
            r.provider_id = p.id.clone();
            for id in &p.parts {
                self.parents.remove(id);
            }
        }
        if let Some(tx) = &self.receipts {
            let _ = tx.send(SmppReceipt {
                carrier: self.name.clone(),
                receipt: r,
            });
        }
    }
}

/// Records one part's outcome; when the job is complete, answers it and
/// returns the acceptance (if accepted).
fn finish_part(
    flights: &mut HashMap<usize, InFlight>,
    flight: usize,
    part: usize,
    outcome: Result<String, CarrierError>,
) -> Option<Accepted> {
    let f = flights.get_mut(&flight)?;
    match outcome {
        Ok(id) => {
            if let Some(slot) = f.ids.get_mut(part) {
                *slot = Some(id);
            }
        }
        Err(e) => {
            if f.error
                .as_ref()
                .is_none_or(|old| old.is_transient() && !e.is_transient())
            {
                f.error = Some(e);
            }
        }
    }
    f.waiting = f.waiting.saturating_sub(1);
    if f.waiting > 0 {
        return None;
    }
    let f = flights.remove(&flight)?;
    let accepted_any = f.ids.iter().any(Option::is_some);
    let result = match f.error {
        Some(CarrierError::Transient {
            code,
            detail,
            maybe_sent,
        }) => Err(CarrierError::Transient {
            code,
            detail,
            maybe_sent: maybe_sent || accepted_any,
        }),
        Some(e) => Err(e),
        None => {
            let ids: Vec<String> = f.ids.into_iter().flatten().collect();
            Ok(Accepted {
                provider_id: ids.first().cloned().unwrap_or_default(),
                part_ids: if ids.len() > 1 { ids } else { Vec::new() },
                carrier: None,
            })
        }
    };
    if let Some(reply) = f.reply {
        let _ = reply.send(result.clone());
    }
    result.ok()
}

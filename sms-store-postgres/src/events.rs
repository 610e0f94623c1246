//! [`PgEventHub`]: the [`EventHub`] port across nodes.
//!
//! Each node keeps a [`LocalEventHub`] for its own sessions. An event
//! published on a node goes to its local sessions at once, and to the
//! `events` table with a `NOTIFY` carrying it (one statement): the other
//! nodes' listeners hand it to their local sessions. The notification is a
//! wake-up hint, the tables are the truth: after every (re)connect of the
//! listener, and on a slow poll, a node reads the `events` rows it has not
//! seen and, for every user with a session on it, the user's mailbox, so a
//! notification lost while the listener was away loses no push. Pushes are
//! handed to a user's local sessions once per mailbox sequence number.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sms_core::events::{Event, EventHub, KickoutReason, LocalEventHub, Push, Subscription};
use sms_core::secret::TokenHash;
use sms_core::user::UserId;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use crate::PgStore;

/// How often a node reads the tables when no notification came.
pub const POLL: Duration = Duration::from_secs(2);
/// Events kept in the table (older rows are pruned).
const KEEP_EVENTS_MS: i64 = 10 * 60 * 1000;
/// Ids below the highest seen that a catch-up reads again (rows commit
/// slightly out of id order).
const LOOKBACK: i64 = 256;
/// Sequence numbers remembered per user, and event ids per node.
const REMEMBER: usize = 4096;
/// Mailbox sequence numbers below the highest read that a catch-up reads
/// again (entries of different users commit slightly out of order).
const MAILBOX_LOOKBACK: i64 = 1024;
/// Mailbox entries one catch-up reads at most.
const MAILBOX_PAGE: i64 = 10_000;
/// Events waiting for the writer; past that, publishing to other nodes is
/// dropped (the mailbox still holds every push; a log line says so).
const OUTGOING: usize = 8192;

/// An event as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Wire {
    Push {
        seq: u64,
        push: Push,
    },
    Kickout {
        reason: KickoutReason,
        spare: Option<TokenHash>,
    },
}

impl Wire {
    fn of(event: &Event) -> Self {
        match event {
            Event::Push { seq, push } => Self::Push {
                seq: *seq,
                push: push.clone(),
            },
            Event::Kickout { reason, spare } => Self::Kickout {
                reason: *reason,
                spare: *spare,
            },
        }
    }

    fn into_event(self) -> Event {
        match self {
            Self::Push { seq, push } => Event::Push { seq, push },
            Self::Kickout { reason, spare } => Event::Kickout { reason, spare },
        }
    }
}

/// The notification payload.
#[derive(Debug, Deserialize)]
struct Note {
    id: i64,
    /// The row itself, unless it was too long for a notification (then it
    /// is read from the table).
    #[serde(flatten)]
    row: Option<NoteRow>,
}

#[derive(Debug, Deserialize)]
struct NoteRow {
    node: String,
    user: String,
    body: String,
}

/// Longest event row a notification carries (PostgreSQL's payload limit
/// is 8000 bytes; the row is escaped once more inside it).
const NOTE_INLINE: i32 = 3000;

#[derive(Debug, Default)]
struct Seen {
    /// Per user: mailbox sequence numbers already handed to local sessions.
    pushes: HashMap<UserId, BTreeSet<u64>>,
    /// Event ids of other nodes already handled.
    events: BTreeSet<i64>,
    /// The highest event id handled.
    cursor: i64,
    /// The highest mailbox sequence number read by a catch-up.
    mailbox_cursor: i64,
    /// Users with (possibly) live local sessions.
    users: HashSet<UserId>,
}

#[derive(Debug)]
struct Shared {
    local: LocalEventHub,
    node: String,
    channel: String,
    store: PgStore,
    seen: Mutex<Seen>,
    outgoing: mpsc::Sender<(UserId, String)>,
}

/// The event hub of one node of a deployment on one database.
#[derive(Debug, Clone)]
pub struct PgEventHub {
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl PgEventHub {
    /// Starts the hub of node `node` (any name unique in the deployment,
    /// e.g. a random id) on `store`'s database: its writer, its listener and
    /// its poll run on the current Tokio runtime until [`stop`](Self::stop).
    pub async fn start(
        store: PgStore,
        node: impl Into<String>,
    ) -> Result<Self, sms_core::StoreError> {
        let channel = format!("sms_events_{}", store.schema());
        let cursor: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM events")
            .fetch_one(store.pool())
            .await
            .map_err(crate::db)?;
        let mailbox_cursor: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM mailbox")
            .fetch_one(store.pool())
            .await
            .map_err(crate::db)?;
        let (tx, rx) = mpsc::channel(OUTGOING);
        let shared = Arc::new(Shared {
            local: LocalEventHub::new(),
            node: node.into(),
            channel,
            store,
            seen: Mutex::new(Seen {
                cursor,
                mailbox_cursor,
                ..Seen::default()
            }),
            outgoing: tx,
        });
        let mut listener = PgListener::connect_with(shared.store.pool())
            .await
            .map_err(crate::db)?;
        listener.listen(&shared.channel).await.map_err(crate::db)?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(writer(shared.clone(), rx, stop_rx.clone()));
        tokio::spawn(listen(shared.clone(), listener, stop_rx));
        Ok(Self { shared, stop })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// Stops the writer, the listener and the poll.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Reads the tables now (what a reconnect or a poll does).
    pub async fn catch_up(&self) {
        catch_up(&self.shared).await;
    }
}

impl Shared {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `event` to the local sessions of `user`, once per push.
    fn deliver(&self, user: &UserId, event: Event) {
        if let Event::Push { seq, .. } = &event {
            let mut seen = self.seen();
            let set = seen.pushes.entry(user.clone()).or_default();
            if !set.insert(*seq) {
                return;
            }
            while set.len() > REMEMBER {
                set.pop_first();
            }
        }
        self.local.publish(user, event);
    }

    /// Handles a notification; one whose row was too long to travel in it
    /// is read from the table.
    async fn handle_note(&self, payload: &str) {
        let Ok(note) = serde_json::from_str::<Note>(payload) else {
            tracing::warn!("event hub: a notification that does not decode was ignored");
            return;
        };
        match note.row {
            Some(r) => self.handle_row(note.id, &r.node, r.user, &r.body),
            None => {
                let row: Result<Option<(String, String, String)>, _> =
                    sqlx::query_as("SELECT node, user_id, body FROM events WHERE id = $1")
                        .bind(note.id)
                        .fetch_optional(self.store.pool())
                        .await;
                match row {
                    Ok(Some((node, user, body))) => self.handle_row(note.id, &node, user, &body),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "event hub: events table unreadable"),
                }
            }
        }
    }

    fn handle_row(&self, id: i64, node: &str, user: String, body: &str) {
        {
            let mut seen = self.seen();
            if !seen.events.insert(id) {
                return;
            }
            while seen.events.len() > REMEMBER {
                seen.events.pop_first();
            }
            seen.cursor = seen.cursor.max(id);
        }
        if node == self.node {
            return;
        }
        match serde_json::from_str::<Wire>(body) {
            Ok(w) => self.deliver(&UserId::from_string(user), w.into_event()),
            Err(e) => {
                tracing::warn!(error = %e, "event hub: an event row that does not decode was ignored")
            }
        }
    }
}

impl EventHub for PgEventHub {
    fn publish(&self, user: &UserId, event: Event) {
        let body = serde_json::to_string(&Wire::of(&event));
        self.shared.deliver(user, event);
        match body {
            Ok(body) => {
                if self.shared.outgoing.try_send((user.clone(), body)).is_err() {
                    tracing::warn!(
                        "event hub: too many events waiting; one was not sent to the other nodes"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "event hub: an event did not encode"),
        }
    }

    fn subscribe(&self, user: &UserId, capacity: usize) -> Subscription {
        self.shared.seen().users.insert(user.clone());
        self.shared.local.subscribe(user, capacity)
    }
}

/// Writes published events: one row and its notification per event.
async fn writer(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(UserId, String)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (user, body) = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = stop.changed() => break,
        };
        let r = sqlx::query(
            "WITH e AS (INSERT INTO events (node, user_id, at_ms, body) \
             VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, $3) \
             RETURNING id, node, user_id, body) \
             SELECT pg_notify($4, CASE WHEN octet_length(body) <= $5 \
             THEN json_build_object('id', id, 'node', node, 'user', user_id, 'body', body)::text \
             ELSE json_build_object('id', id)::text END) FROM e",
        )
        .bind(&shared.node)
        .bind(user.as_str())
        .bind(&body)
        .bind(&shared.channel)
        .bind(NOTE_INLINE)
        .execute(shared.store.pool())
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "event hub: an event could not be sent to the other nodes");
        }
    }
}

enum Heard {
    Note(String),
    Lost,
}

/// Receives notifications (and forwards them to the handler loop), reads
/// the tables after every reconnect and on each poll tick.
async fn listen(
    shared: Arc<Shared>,
    mut listener: PgListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let recv = tokio::spawn(async move {
        loop {
            let heard = match listener.try_recv().await {
                Ok(Some(n)) => Heard::Note(n.payload().to_owned()),
                // The connection was lost: the next call reconnects.
                Ok(None) => Heard::Lost,
                Err(e) => {
                    tracing::warn!(error = %e, "event hub: listener failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Heard::Lost
                }
            };
            if tx.send(heard).is_err() {
                break;
            }
        }
    });
    let mut tick = tokio::time::interval(POLL);
    let mut ticks = 0u64;
    let mut lost = false;
    loop {
        tokio::select! {
            h = rx.recv() => match h {
                Some(Heard::Note(p)) => {
                    shared.handle_note(&p).await;
                    if lost {
                        // Back after a reconnect: what came meanwhile is in
                        // the tables.
                        lost = false;
                        catch_up(&shared).await;
                    }
                }
                Some(Heard::Lost) => {
                    lost = true;
                    catch_up(&shared).await;
                }
                None => break,
            },
            _ = tick.tick() => {
                ticks += 1;
                catch_up(&shared).await;
                if ticks.is_multiple_of(30) {
                    prune(&shared).await;
                }
            }
            _ = stop.changed() => break,
        }
    }
    recv.abort();
}

/// Reads the events not seen yet and, for each user with a local session,
/// the mailbox entries not yet handed to them.
async fn catch_up(shared: &Arc<Shared>) {
    let cursor = shared.seen().cursor;
    let rows: Result<Vec<(i64, String, String, String)>, _> =
        sqlx::query_as("SELECT id, node, user_id, body FROM events WHERE id > $1 ORDER BY id")
            .bind(cursor - LOOKBACK)
            .fetch_all(shared.store.pool())
            .await;
    match rows {
        Ok(rows) => {
            for (id, node, user, body) in rows {
                shared.handle_row(id, &node, user, &body);
            }
        }
        Err(e) => tracing::warn!(error = %e, "event hub: events table unreadable"),
    }
    let (users, after): (Vec<String>, i64) = {
        let mut seen = shared.seen();
        seen.users.retain(|u| shared.local.subscribers(u) > 0);
        let live: HashSet<UserId> = seen.users.clone();
        seen.pushes.retain(|u, _| live.contains(u));
        (
            live.iter().map(|u| u.as_str().to_owned()).collect(),
            seen.mailbox_cursor - MAILBOX_LOOKBACK,
        )
    };
    if users.is_empty() {
        return;
    }
    // Every number drawn before this point is read now (or within the
    // lookback next time): the cursor moves on even without local entries.
    let drawn: Option<i64> = sqlx::query_scalar("SELECT last_value FROM mailbox_seq")
        .fetch_one(shared.store.pool())
        .await
        .ok();
    // One query for every user with a session here: the entries newer than
    // the last catch-up read (what a lost notification would have carried).
    let rows: Result<Vec<(String, i64, String)>, _> = sqlx::query_as(
        "SELECT user_id, seq, body FROM mailbox WHERE seq > $1 AND user_id = ANY($2) \
         ORDER BY seq LIMIT $3",
    )
    .bind(after)
    .bind(&users)
    .bind(MAILBOX_PAGE)
    .fetch_all(shared.store.pool())
    .await;
    match rows {
        Ok(rows) => {
            for (user, seq, body) in rows {
                {
                    let mut seen = shared.seen();
                    seen.mailbox_cursor = seen.mailbox_cursor.max(seq);
                }
                match serde_json::from_str::<Push>(&body) {
                    Ok(push) => shared.deliver(
                        &UserId::from_string(user),
                        Event::Push {
                            seq: u64::try_from(seq).unwrap_or(0),
                            push,
                        },
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "event hub: a mailbox entry that does not decode was ignored")
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "event hub: mailbox unreadable");
            return;
        }
    }
    if let Some(drawn) = drawn {
        let mut seen = shared.seen();
        seen.mailbox_cursor = seen.mailbox_cursor.max(drawn);
    }
}

async fn prune(shared: &Arc<Shared>) {
    let r = sqlx::query(
        "DELETE FROM events WHERE at_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $1",
    )
    .bind(KEEP_EVENTS_MS)
    .execute(shared.store.pool())
    .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "event hub: pruning failed");
    }
}

//! One connection: a single task with a select loop over the socket (reads
//! and writes driven together), the user's event subscription, the ping
//! timer, the idle deadline and the shutdown signal.
//!
//! Writes go through a bounded outbound queue drained by the same task; a
//! push that must be acknowledged in the user's mailbox is acknowledged only
//! after the frame carrying it was flushed to the socket.
//!
//! An idle session is kept small (tens of thousands per process): the task's
//! future holds only the select loop (request handling, mailbox reads and the
//! close run in boxed futures of their own, allocated while they run), one
//! timer serves both the ping and the idle deadline, the outbound queue and
//! the event subscription hold no memory while empty.

use std::collections::{HashSet, VecDeque};
use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use sms_core::events::{Event, Push, Subscription};
use sms_core::phone::PhoneNumber;
use sms_core::pool::{LeaseFilter, Operator};
use sms_core::secret::{Token, TokenHash};
use sms_core::store::SessionOrigin;
use sms_core::user::{User, UserId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::protocol::{self, Classified, Request};
use crate::Shared;

/// Room the queue must have before another request is read: the largest
/// answer (an `SCMobileNum` and one `PushMobileNum` per number) plus a
/// little.
const REQUEST_RESERVE: usize = 32;

/// Decrements the live-session count when the connection ends, however it
/// ends.
pub(crate) struct LiveGuard(Arc<Shared>);

impl LiveGuard {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        shared.live.send_modify(|n| *n += 1);
        metrics::gauge!(sms_core::metrics::WS_SESSIONS).increment(1.0);
        Self(shared)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.send_modify(|n| *n = n.saturating_sub(1));
        metrics::gauge!(sms_core::metrics::WS_SESSIONS).decrement(1.0);
    }
}

/// A mailbox entry to acknowledge once its frame is flushed.
#[derive(Debug, Clone)]
struct Ack {
    user: UserId,
    seq: u64,
}

/// A frame waiting to be written.
#[derive(Debug)]
struct Out {
    msg: Message,
    ack: Option<Ack>,
}

/// The outbound queue and the write state.
#[derive(Debug)]
struct Outbox {
    queue: VecDeque<Out>,
    cap: usize,
    /// Acks of frames handed to tungstenite but not yet flushed.
    unflushed: Vec<Ack>,
    /// Frames were handed over since the last completed flush.
    dirty: bool,
}

impl Outbox {
    fn room(&self) -> usize {
        self.cap.saturating_sub(self.queue.len())
    }

    fn push_json(&mut self, v: &Value) {
        self.queue.push_back(Out {
            msg: Message::text(v.to_string()),
            ack: None,
        });
    }
}

/// What the socket did.
enum Io {
    Frame(Message),
    /// Writes made room in a queue that was too full to read requests or
    /// take events: the loop must look again.
    Progress,
    Flushed(Vec<Ack>),
    Ended,
    Error(WsError),
}

/// Drives writes (as far as the socket accepts them) and then reads one
/// frame if the queue has room for its answer. Cancel-safe: all state lives
/// in `ws` and `out`.
fn poll_io<S>(cx: &mut Context<'_>, ws: &mut WebSocketStream<S>, out: &mut Outbox) -> Poll<Io>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let gated = out.room() < REQUEST_RESERVE;
    while !out.queue.is_empty() {
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {
                let Some(item) = out.queue.pop_front() else {
                    break;
                };
                if let Err(e) = ws.start_send_unpin(item.msg) {
                    return Poll::Ready(Io::Error(e));
                }
                out.dirty = true;
                if let Some(a) = item.ack {
                    out.unflushed.push(a);
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Io::Error(e)),
            Poll::Pending => break,
        }
    }
    if out.dirty {
        match ws.poll_flush_unpin(cx) {
            Poll::Ready(Ok(())) => {
                out.dirty = false;
                if out.queue.is_empty() {
                    // An idle connection holds no queue memory.
                    out.queue = VecDeque::new();
                }
                if !out.unflushed.is_empty() {
                    return Poll::Ready(Io::Flushed(std::mem::take(&mut out.unflushed)));
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Io::Error(e)),
            Poll::Pending => {}
        }
    }
    if out.room() < REQUEST_RESERVE {
        return Poll::Pending;
    }
    if gated {
        return Poll::Ready(Io::Progress);
    }
    match ws.poll_next_unpin(cx) {
        Poll::Ready(Some(Ok(m))) => Poll::Ready(Io::Frame(m)),
        Poll::Ready(Some(Err(e))) => Poll::Ready(Io::Error(e)),
        Poll::Ready(None) => Poll::Ready(Io::Ended),
        Poll::Pending => Poll::Pending,
    }
}

/// A logged-in session. Only the user's id is kept (not the whole user, with
/// its password hash): the few requests that need more read it.
#[derive(Debug)]
struct Login {
    user: UserId,
    /// The token this session stands for (after a password change made
    /// here, the new one).
    token: Token,
    /// Token hashes a kickout must spare this session for: the login token,
    /// and the old and new tokens of a password change made here.
    own: Vec<TokenHash>,
    events: Subscription,
    /// Mailbox entries read from the store, not yet queued.
    backlog: VecDeque<(u64, Push)>,
    /// The last sequence number read from the mailbox: live events up to it
    /// are duplicates.
    read_upto: Option<u64>,
    /// The mailbox was read to its end. Until then every live push is in it
    /// (stored before published) and comes from a later page, in order.
    mailbox_done: bool,
}

/// What the loop does next.
enum Flow {
    Continue,
    /// End the connection, sending this close frame (after whatever is
    /// queued) if any.
    Exit(Option<CloseFrame>),
}

fn close(code: CloseCode, reason: &'static str) -> Flow {
    Flow::Exit(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

enum Step {
    Io(Io),
    Event(Option<Event>),
    Shutdown,
    /// The timer fired: a ping is due, or the idle deadline passed.
    Timer,
}

struct Conn<S> {
    shared: Arc<Shared>,
    ws: WebSocketStream<S>,
    out: Outbox,
    login: Option<Login>,
    client_ip: Option<IpAddr>,
    bad_frames: VecDeque<Instant>,
}

/// Waits for the next event of the logged-in user (never, when logged out).
async fn next_event(login: &mut Option<Login>) -> Option<Event> {
    match login {
        Some(l) => l.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves one upgraded connection until it ends.
///
/// Not an `async fn`: the future owns the connection's state once (an async
/// function would keep its arguments beside the state made from them).
pub(crate) fn run<S>(
    shared: Arc<Shared>,
    ws: WebSocketStream<S>,
    client_ip: Option<IpAddr>,
    guard: LiveGuard,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cap = shared.config.effective_outbound_queue();
    let mut conn = Conn {
        shared,
        ws,
        out: Outbox {
            queue: VecDeque::new(),
            cap,
            unflushed: Vec::new(),
            dirty: false,
        },
        login: None,
        client_ip,
        bad_frames: VecDeque::new(),
    };
    async move {
        let frame = conn.serve().await;
        // Boxed: the close's futures take no room in an idle session's task.
        Box::pin(conn.finish(frame)).await;
        drop(guard);
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn send(&mut self, v: &Value) {
        self.out.push_json(v);
    }

    /// The select loop; returns the close frame to end with.
    async fn serve(&mut self) -> Option<CloseFrame> {
        let idle_timeout = self.shared.config.idle_timeout;
        let ping_every = self
            .shared
            .config
            .ping_interval
            .max(Duration::from_millis(10));
        let mut shutdown = self.shared.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            return self.kickout(1, CloseCode::Away);
        }
        let mut shutdown_live = true;
        // One timer for both deadlines: it fires at the earlier, and the
        // loop works out which passed (a frame only moves the idle deadline
        // later, so the timer is never late).
        let start = Instant::now();
        let mut idle_at = start + idle_timeout;
        let mut ping_at = start + ping_every;
        // A ping came due while the queue was full: sent once there is room.
        let mut ping_due = false;
        let timer = tokio::time::sleep_until(ping_at.min(idle_at));
        tokio::pin!(timer);

        loop {
            let mailbox_work = self
                .login
                .as_ref()
                .is_some_and(|l| !l.backlog.is_empty() || !l.mailbox_done);
            if mailbox_work && self.out.room() > 0 {
                // Boxed: only sessions reading their mailbox pay for it.
                if let Err(e) = Box::pin(self.refill()).await {
                    tracing::warn!(error = %e, "hub ws: mailbox read failed");
                    return close(CloseCode::Error, "mailbox unavailable").into_frame();
                }
            }
            if ping_due && self.out.room() > 0 {
                ping_due = false;
                self.out.queue.push_back(Out {
                    msg: Message::Ping(Default::default()),
                    ack: None,
                });
            }
            // Live pushes wait while older ones from the mailbox are queued
            // (order), except while the mailbox is still being paged: then
            // they are all duplicates, dropped at once so that the event
            // queue does not fill up.
            let take_events = self.out.room() > 0
                && self
                    .login
                    .as_ref()
                    .is_some_and(|l| l.backlog.is_empty() || !l.mailbox_done);
            let step = tokio::select! {
                biased;
                changed = shutdown.changed(), if shutdown_live => match changed {
                    Ok(()) if *shutdown.borrow_and_update() => Step::Shutdown,
                    Ok(()) => continue,
                    Err(_) => {
                        shutdown_live = false;
                        continue;
                    }
                },
                io = poll_fn(|cx| poll_io(cx, &mut self.ws, &mut self.out)) => Step::Io(io),
                ev = next_event(&mut self.login), if take_events => Step::Event(ev),
                () = &mut timer => Step::Timer,
            };
            let flow = match step {
                Step::Shutdown => return self.kickout(1, CloseCode::Away),
                Step::Timer => {
                    let now = Instant::now();
                    if now >= ping_at {
                        ping_due = true;
                        ping_at = now + ping_every;
                    }
                    if now >= idle_at {
                        return close(CloseCode::Away, "idle timeout").into_frame();
                    }
                    timer.as_mut().reset(ping_at.min(idle_at));
                    Flow::Continue
                }
                Step::Event(ev) => self.on_event(ev),
                Step::Io(Io::Flushed(acks)) => {
                    Box::pin(ack(&self.shared, acks)).await;
                    Flow::Continue
                }
                Step::Io(Io::Progress) => Flow::Continue,
                Step::Io(Io::Ended) => return None,
                Step::Io(Io::Error(e)) => return error_close(&e),
                Step::Io(Io::Frame(msg)) => {
                    idle_at = Instant::now() + idle_timeout;
                    // Boxed: the largest state (a request's calls into the
                    // core) is allocated only while a request runs.
                    Box::pin(self.on_frame(msg)).await
                }
            };
            if let Flow::Exit(frame) = flow {
                return frame;
            }
        }
    }

    /// Moves mailbox entries into the queue as room allows, reading the
    /// mailbox a page (one queue's worth) at a time, so that a long-offline
    /// user's backlog never sits in memory whole.
    async fn refill(&mut self) -> Result<(), sms_core::CoreError> {
        let Some(login) = self.login.as_mut() else {
            return Ok(());
        };
        let page = self.out.cap.max(1);
        while self.out.room() > 0 {
            let Some((seq, push)) = login.backlog.pop_front() else {
                if login.mailbox_done {
                    break;
                }
                let entries = self
                    .shared
                    .core
                    .pool
                    .mailbox_page(&login.user, login.read_upto, page)
                    .await?;
                login.mailbox_done = entries.len() < page;
                if let Some((last, _)) = entries.last() {
                    login.read_upto = Some(*last);
                }
                login.backlog.extend(entries);
                continue;
            };
            self.out
                .queue
                .push_back(push_frame(&login.user, seq, &push));
        }
        Ok(())
    }

    /// Queues `PushKickout` and ends the connection.
    fn kickout(&mut self, state: u8, code: CloseCode) -> Option<CloseFrame> {
        self.send(&protocol::kickout(state));
        pushed("kickout");
        close(code, "kicked out").into_frame()
    }

    fn on_event(&mut self, ev: Option<Event>) -> Flow {
        let Some(login) = self.login.as_mut() else {
            return Flow::Continue;
        };
        match ev {
            // The hub dropped this subscriber (it fell behind): close; the
            // mailbox keeps what was not delivered.
            None => close(CloseCode::Again, "too slow"),
            Some(Event::Push { seq, push }) => {
                let from_mailbox = !login.mailbox_done || login.read_upto.is_some_and(|r| seq <= r);
                if !from_mailbox {
                    self.out
                        .queue
                        .push_back(push_frame(&login.user, seq, &push));
                }
                Flow::Continue
            }
            Some(Event::Kickout { reason, spare }) => {
                if spare.is_some_and(|h| login.own.contains(&h)) {
                    return Flow::Continue;
                }
                Flow::Exit(self.kickout(reason.state(), CloseCode::Normal))
            }
        }
    }

    async fn on_frame(&mut self, msg: Message) -> Flow {
        match msg {
            Message::Text(text) => match protocol::classify(text.as_str()) {
                Classified::Bad(code) => self.bad_frame(code),
                Classified::Request(req, fields) => {
                    self.on_request(req, &fields).await;
                    Flow::Continue
                }
            },
            Message::Binary(_) => self.bad_frame(protocol::NOT_AN_OBJECT),
            // tungstenite answers pings itself and queues the reply to a
            // close; the stream ends once the close handshake is done.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                Flow::Continue
            }
        }
    }

    /// Answers a bad frame and counts it against the limit.
    fn bad_frame(&mut self, code: i64) -> Flow {
        self.send(&protocol::error(code));
        let now = Instant::now();
        let window = self.shared.config.bad_frame_window;
        while self
            .bad_frames
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.bad_frames.pop_front();
        }
        self.bad_frames.push_back(now);
        if self.bad_frames.len() > self.shared.config.bad_frame_limit {
            close(CloseCode::Policy, "too many bad frames")
        } else {
            Flow::Continue
        }
    }

    async fn on_request(&mut self, req: Request, f: &Map<String, Value>) {
        if req == Request::Login {
            return self.on_login(f).await;
        }
        if self.login.is_none() {
            return self.send(&protocol::error(protocol::NOT_LOGGED_IN));
        }
        match req {
            Request::Login => {}
            Request::Logout => self.on_logout().await,
            Request::ModifyPwd => self.on_modify_pwd(f).await,
            Request::MobileNum => self.on_mobile_num(f).await,
            Request::SendMsg => self.on_send_msg(f).await,
            Request::BindEmailGetVCode => self.on_bind_get(f).await,
            Request::BindEmailCheckVCode => self.on_bind_check(f).await,
        }
    }

    // ----- requests ---------------------------------------------------------

    async fn on_login(&mut self, f: &Map<String, Value>) {
        let req = Request::Login;
        let core = self.shared.core.clone();
        let token = Token::from_client(protocol::str_or_empty(f, "token"));
        if token.expose().is_empty() {
            return self.send(&protocol::answer(req, -1));
        }
        let opened = match core.accounts.open_session(&token).await {
            Ok(o) => o,
            Err(e) => {
                return self.send(&protocol::answer(
                    req,
                    protocol::failure_code(Request::Login, &e),
                ))
            }
        };
        // Subscribe first, then look again: a ban or password change that
        // raced with this login is either seen here or arrives as an event.
        let events = core
            .events
            .subscribe(&opened.user.id, self.shared.config.event_queue);
        let user = match core.accounts.authenticate(&token).await {
            Ok((user, _)) => user,
            Err(e) => {
                return self.send(&protocol::answer(
                    req,
                    protocol::failure_code(Request::Login, &e),
                ))
            }
        };
        let balance = match core.billing.balance(&user.id).await {
            Ok(b) => b.available(),
            Err(e) => {
                return self.send(&protocol::answer(
                    req,
                    protocol::failure_code(Request::Login, &e),
                ))
            }
        };
        let flag = match (opened.first_use, opened.session.origin) {
            (true, SessionOrigin::Renewal) => 2,
            (true, SessionOrigin::Signup) => 3,
            (true, SessionOrigin::PasswordChange) => 4,
            _ => 1,
        };
        let name = match (&user.username, &user.phone) {
            (Some(u), _) => u.as_str().to_owned(),
            (None, Some(p)) => p.display_form().to_owned(),
            (None, None) => String::new(),
        };
        let email = user
            .email
            .as_ref()
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default();
        self.send(&json!({
            "protocol": req.answer(),
            "code": 0,
            "data": {
                "userInfo": {
                    "user": name,
                    "email": email,
                    "point": user.points,
                    "balance": balance,
                },
                "flag": flag,
            },
        }));
        // The mailbox follows, a page at a time (`refill`).
        self.login = Some(Login {
            user: user.id,
            own: vec![token.hash()],
            token,
            events,
            backlog: VecDeque::new(),
            read_upto: None,
            mailbox_done: false,
        });
    }

    async fn on_logout(&mut self) {
        let req = Request::Logout;
        let Some(login) = self.login.take() else {
            return;
        };
        match self.shared.core.accounts.logout(&login.token).await {
            // Dropping the login drops the subscription and the backlog.
            Ok(()) => self.send(&protocol::answer(req, 0)),
            Err(e) => {
                self.login = Some(login);
                self.send(&protocol::answer(
                    req,
                    protocol::failure_code(Request::Logout, &e),
                ));
            }
        }
    }

    async fn on_modify_pwd(&mut self, f: &Map<String, Value>) {
        let req = Request::ModifyPwd;
        let core = self.shared.core.clone();
        let Some(login) = self.login.as_mut() else {
            return;
        };
        let token = Token::from_client(protocol::str_or_empty(f, "token"));
        let password = match f.get("password") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            // Another JSON type reads as a value no rule accepts.
            Some(_) => "\u{0}",
        };
        // The token must be one of this session's user: a session changes
        // its own user's password only.
        match core.accounts.authenticate(&token).await {
            Ok((u, _)) if u.id == login.user => {}
            Ok(_) => return self.send(&protocol::answer(req, -1)),
            Err(e) => {
                return self.send(&protocol::answer(
                    req,
                    protocol::failure_code(Request::ModifyPwd, &e),
                ))
            }
        }
        match core.accounts.change_password(&token, password).await {
            Ok(new) => {
                // The kickout the core publishes spares the token used; this
                // session now stands for the new token.
                login.own.push(token.hash());
                login.own.push(new.hash());
                login.token = new.clone();
                self.send(&json!({ "protocol": req.answer(), "code": 0, "token": new.expose() }));
            }
            Err(e) => self.send(&protocol::answer(
                req,
                protocol::failure_code(Request::ModifyPwd, &e),
            )),
        }
    }

    async fn on_mobile_num(&mut self, f: &Map<String, Value>) {
        let req = Request::MobileNum;
        let core = self.shared.core.clone();
        let Some(user) = self.login.as_ref().map(|l| l.user.clone()) else {
            return;
        };
        let code = |c| protocol::answer(req, c);
        let item_id = protocol::str_or_empty(f, "itemId");
        match core.pool.item(item_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return self.send(&code(-1)),
            Err(e) => return self.send(&code(protocol::failure_code(Request::MobileNum, &e))),
        }
        // The count's range is the core's rule, asked here so that a bad
        // count answers -2 before the area and operator are judged.
        let Some(count) = protocol::parse_count(f.get("count"))
            .filter(|n| core.pool.check_lease_count(*n).is_ok())
        else {
            return self.send(&code(-2));
        };
        let area = match protocol::optional(f, "area") {
            None => None,
            Some(Value::String(s))
                if !s.is_empty() && s.chars().count() <= protocol::MAX_AREA_CHARS =>
            {
                Some(s.clone())
            }
            Some(_) => return self.send(&code(-3)),
        };
        let operator = match protocol::optional(f, "operator") {
            None => None,
            Some(Value::String(s)) => match Operator::parse(s) {
                Some(o) => Some(o),
                None => return self.send(&code(-4)),
            },
            Some(_) => return self.send(&code(-4)),
        };
        let custom = match protocol::optional(f, "customNum") {
            None => None,
            Some(_) => match protocol::text_field(f, "customNum")
                .and_then(|t| PhoneNumber::parse_cn_mobile(t.as_str()).ok())
            {
                Some(p) => Some(p),
                None => return self.send(&code(-5)),
            },
        };
        let filter = LeaseFilter {
            area,
            operator,
            custom,
        };
        match core.pool.lease(&user, item_id, count, filter).await {
            Ok(leases) => {
                self.send(&code(0));
                for l in leases {
                    self.send(&protocol::push_mobile(l.mobile.display_form(), l.until));
                    pushed("mobile_num");
                }
            }
            Err(e) => self.send(&code(protocol::failure_code(Request::MobileNum, &e))),
        }
    }

    async fn on_send_msg(&mut self, f: &Map<String, Value>) {
        let req = Request::SendMsg;
        let core = self.shared.core.clone();
        let Some(user) = self.login.as_ref().map(|l| l.user.clone()) else {
            return;
        };
        let item_id = protocol::str_or_empty(f, "itemId");
        let mobile = protocol::text_field(f, "mobileNum");
        let mobile = mobile.as_ref().map(|t| t.as_str()).unwrap_or("");
        let msg = protocol::str_or_empty(f, "msg");
        let c = match core.pool.send_from(&user, item_id, mobile, msg).await {
            Ok(()) => 0,
            Err(e) => protocol::failure_code(Request::SendMsg, &e),
        };
        self.send(&protocol::answer(req, c));
    }

    async fn on_bind_get(&mut self, f: &Map<String, Value>) {
        let req = Request::BindEmailGetVCode;
        let core = self.shared.core.clone();
        let Some(login) = self.login.as_ref() else {
            return;
        };
        let email = protocol::str_or_empty(f, "email");
        let bound = match current_user(&core, &login.user).await {
            Ok(user) => {
                core.accounts
                    .bind_email_send(&user, email, self.client_ip)
                    .await
            }
            Err(e) => Err(e),
        };
        let v = match bound {
            Ok(issued) => {
                json!({ "protocol": req.answer(), "code": 0, "againTimestamp": issued.again_at })
            }
            Err(e) => match protocol::failure(Request::BindEmailGetVCode, &e) {
                (c, Some(at)) => {
                    json!({ "protocol": req.answer(), "code": c, "againTimestamp": at })
                }
                (c, None) => protocol::answer(req, c),
            },
        };
        self.send(&v);
    }

    async fn on_bind_check(&mut self, f: &Map<String, Value>) {
        let req = Request::BindEmailCheckVCode;
        let core = self.shared.core.clone();
        let Some(login) = self.login.as_ref() else {
            return;
        };
        let email = protocol::str_or_empty(f, "email");
        let code = protocol::text_field(f, "vCode");
        let code = code.as_ref().map(|t| t.as_str()).unwrap_or("");
        let bound = match current_user(&core, &login.user).await {
            Ok(user) => core.accounts.bind_email_check(&user, email, code).await,
            Err(e) => Err(e),
        };
        let c = match bound {
            Ok(_) => 0,
            Err(e) => protocol::failure_code(Request::BindEmailCheckVCode, &e),
        };
        self.send(&protocol::answer(req, c));
    }

    // ----- the end ------------------------------------------------------------

    /// Writes what is queued, acknowledges what was flushed, sends `frame`
    /// and waits for the client's close, all within the close timeout.
    async fn finish(mut self, frame: Option<CloseFrame>) {
        let limit = self.shared.config.close_timeout;
        let _ = tokio::time::timeout(limit, async {
            let mut acks = std::mem::take(&mut self.out.unflushed);
            while let Some(item) = self.out.queue.pop_front() {
                if self.ws.feed(item.msg).await.is_err() {
                    return;
                }
                acks.extend(item.ack);
            }
            if self.ws.flush().await.is_err() {
                return;
            }
            ack(&self.shared, acks).await;
            if let Some(frame) = frame {
                if self.ws.close(Some(frame)).await.is_err() {
                    return;
                }
                // The stream ends when the client's close arrives.
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

impl Flow {
    fn into_frame(self) -> Option<CloseFrame> {
        match self {
            Flow::Exit(f) => f,
            Flow::Continue => None,
        }
    }
}

/// The session's user as stored now.
async fn current_user(core: &sms_core::Core, id: &UserId) -> Result<User, sms_core::CoreError> {
    core.accounts
        .user(id)
        .await?
        .ok_or(sms_core::CoreError::UserNotFound)
}

/// Acknowledges flushed mailbox entries. An entry that another session of
/// the user (every session gets every push) acknowledged a moment ago is not
/// acknowledged again: one store write per push, not one per session.
async fn ack(shared: &Shared, acks: Vec<Ack>) {
    for a in acks {
        if !shared.recent_acks().claim(&a.user, a.seq) {
            continue;
        }
        if let Err(e) = shared.core.pool.ack(&a.user, a.seq).await {
            // Another session may acknowledge it; else it stays in the
            // mailbox and comes again at the next login.
            shared.recent_acks().forget(&a.user, a.seq);
            tracing::error!(error = %e, seq = a.seq, "hub ws: mailbox ack failed");
        }
    }
}

/// Mailbox entries acknowledged lately by this process, the last
/// [`RECENT_ACKS`] of them.
#[derive(Debug, Default)]
pub(crate) struct RecentAcks {
    acked: HashSet<(UserId, u64)>,
    order: VecDeque<(UserId, u64)>,
}

/// How many acknowledgements [`RecentAcks`] remembers.
const RECENT_ACKS: usize = 4096;

impl RecentAcks {
    /// True if `(user, seq)` was not acknowledged lately: the caller
    /// acknowledges it (and [`forget`](Self::forget)s it if that fails).
    fn claim(&mut self, user: &UserId, seq: u64) -> bool {
        let entry = (user.clone(), seq);
        if !self.acked.insert(entry.clone()) {
            return false;
        }
        self.order.push_back(entry);
        while self.order.len() > RECENT_ACKS {
            if let Some(old) = self.order.pop_front() {
                self.acked.remove(&old);
            }
        }
        true
    }

    fn forget(&mut self, user: &UserId, seq: u64) {
        self.acked.remove(&(user.clone(), seq));
    }
}

/// The close frame for a read or write failure, if one can still be sent.
fn error_close(e: &WsError) -> Option<CloseFrame> {
    tracing::debug!(error = %e, "hub ws: connection error");
    let (code, reason) = match e {
        WsError::Capacity(_) => (CloseCode::Size, "message too big"),
        WsError::Utf8 => (CloseCode::Invalid, "invalid UTF-8"),
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// Counts one push queued for a live session (`sms_pushes_total{kind}`).
fn pushed(kind: &'static str) {
    metrics::counter!(sms_core::metrics::PUSHES, "kind" => kind).increment(1);
}

fn push_frame(user: &UserId, seq: u64, push: &Push) -> Out {
    pushed("recv_msg");
    let v = match push {
        Push::RecvMsg { mobile, msg, .. } => protocol::push_recv(mobile, msg),
    };
    Out {
        msg: Message::text(v.to_string()),
        ack: Some(Ack {
            user: user.clone(),
            seq,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sms_core::memory::MemoryStore;
    use sms_core::store::Stores;
    use sms_core::Core;
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn shared() -> Arc<Shared> {
        let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
            .build()
            .expect("test core");
        Arc::new(Shared {
            core,
            config: crate::WsConfig::default(),
            shutdown: tokio::sync::watch::Sender::new(false),
            live: tokio::sync::watch::Sender::new(0),
            recent_acks: Default::default(),
        })
    }

    /// The task of an idle session is mostly its future: what it holds
    /// across the select loop's await, not a request's calls into the core
    /// nor the close (both boxed while they run).
    #[tokio::test]
    async fn an_idle_session_future_stays_small() {
        let shared = shared();
        let guard = LiveGuard::new(shared.clone());
        let (io, _peer) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let future = run(shared, ws, None, guard);
        let size = std::mem::size_of_val(&future);
        eprintln!("session future: {size} bytes");
        assert!(size <= 1_200, "the session future grew to {size} bytes");
    }

    #[test]
    fn an_ack_is_claimed_once_until_forgotten_or_pushed_out() {
        let mut acks = RecentAcks::default();
        let (a, b) = (
            UserId::from_string("a".into()),
            UserId::from_string("b".into()),
        );
        assert!(acks.claim(&a, 1));
        assert!(!acks.claim(&a, 1), "a second session of the user skips it");
        assert!(acks.claim(&b, 1), "another user's entry is its own");
        acks.forget(&a, 1);
        assert!(acks.claim(&a, 1), "a failed ack is tried again");
        for seq in 2..(RECENT_ACKS as u64 + 10) {
            assert!(acks.claim(&b, seq));
        }
        assert!(acks.order.len() <= RECENT_ACKS);
        assert!(acks.claim(&a, 1), "forgotten once pushed out");
        assert!(acks.acked.len() <= RECENT_ACKS);
    }
}

//! Opening a session (with a sign-up, or by a login): one atomic store call.
//!
//! The decision creates the user when it is a sign-up (unique fields
//! checked, all or nothing), stores the new session with the next value of
//! the store's session sequence, tells a login from a renewal, and keeps at
//! most [`OpenSession::max_sessions`] live sessions per user by revoking the
//! expired ones and the oldest live ones **by sequence** (never by
//! timestamp: sessions opened in the same second still go oldest first). The
//! rule is [`OpenSession::apply`]; a [`crate::store::SessionStore`] loads
//! the user's sessions, calls it, and commits the result atomically.

use crate::secret::TokenHash;
use crate::store::{Session, SessionOrigin};
use crate::user::User;

/// The request of [`crate::store::SessionStore::open_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    /// The new session; the store sets its `seq`, and a
    /// [`SessionOrigin::Login`] becomes [`SessionOrigin::Renewal`] when the
    /// user's latest session had expired.
    pub session: Session,
    /// A sign-up: the user to create with the session (same id).
    pub new_user: Option<User>,
    /// Live sessions kept per user, the new one included.
    pub max_sessions: usize,
}

/// What [`OpenSession::apply`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAdmission {
    /// The session to store.
    pub session: Session,
    /// The sessions of the user to revoke.
    pub evict: Vec<TokenHash>,
}

impl OpenSession {
    /// The pure transition: given every stored session of the user (any
    /// order) and the sequence number the store assigns to the new one
    /// (larger than every earlier one), the session to store and the
    /// sessions to revoke. "Now" is the new session's `issued_at`.
    pub fn apply(&self, existing: &[Session], seq: u64) -> SessionAdmission {
        let now = self.session.issued_at;
        let mut session = self.session.clone();
        session.seq = seq;
        let latest = existing.iter().max_by_key(|s| (s.seq, s.issued_at));
        if session.origin == SessionOrigin::Login {
            if let Some(s) = latest {
                if s.expires_at <= now {
                    session.origin = SessionOrigin::Renewal;
                }
            }
        }
        let mut live: Vec<&Session> = existing.iter().filter(|s| s.expires_at > now).collect();
        live.sort_by_key(|s| (s.seq, s.issued_at));
        let excess = live
            .len()
            .saturating_sub(self.max_sessions.saturating_sub(1));
        let evict = existing
            .iter()
            .filter(|s| s.expires_at <= now)
            .chain(live.into_iter().take(excess))
            .map(|s| s.token_hash)
            .collect();
        SessionAdmission { session, evict }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::secret::Token;
    use crate::user::UserId;

    fn session(token: &str, seq: u64, issued_at: i64) -> Session {
        Session {
            token_hash: Token::from_client(token).hash(),
            user_id: UserId::from_string("u".into()),
            origin: SessionOrigin::Login,
            issued_at,
            expires_at: issued_at + 100,
            first_used_at: None,
            seq,
        }
    }

    fn open(token: &str, now: i64, max: usize) -> OpenSession {
        OpenSession {
            session: session(token, 0, now),
            new_user: None,
            max_sessions: max,
        }
    }

    #[test]
    fn same_second_sessions_go_oldest_first_by_sequence() {
        let clock = ManualClock::at(1_000);
        // Listed newest first, all in one second: only the sequence orders
        // them.
        let existing: Vec<Session> = (1..=3)
            .rev()
            .map(|i| session(&format!("t{i}"), i, clock.unix()))
            .collect();
        let a = open("new", clock.unix(), 3).apply(&existing, 4);
        assert_eq!(a.session.seq, 4);
        assert_eq!(a.evict, vec![Token::from_client("t1").hash()]);
        let a = open("new", clock.unix(), 2).apply(&existing, 4);
        assert_eq!(
            a.evict,
            vec![
                Token::from_client("t1").hash(),
                Token::from_client("t2").hash()
            ]
        );
    }

    #[test]
    fn expired_sessions_go_and_the_login_is_a_renewal() {
        let clock = ManualClock::at(1_000);
        let existing = vec![session("old", 1, clock.unix())];
        clock.advance(100);
        let a = open("new", clock.unix(), 50).apply(&existing, 2);
        assert_eq!(a.session.origin, SessionOrigin::Renewal);
        assert_eq!(a.evict, vec![Token::from_client("old").hash()]);
        clock.advance(-1);
        let a = open("new", clock.unix(), 50).apply(&existing, 2);
        assert_eq!(a.session.origin, SessionOrigin::Login);
        assert!(a.evict.is_empty());
        // Other origins stay as they are.
        let mut o = open("new", clock.unix() + 1, 50);
        o.session.origin = SessionOrigin::Recovery;
        assert_eq!(
            o.apply(&existing, 2).session.origin,
            SessionOrigin::Recovery
        );
    }
}

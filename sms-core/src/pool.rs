//! The code-receiving platform's domain: numbers fed by SIM devices, items
//! (the apps numbers are used for), leases, received SMS and the messages
//! queued for devices.

use std::collections::BTreeSet;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::ledger::{Amount, LedgerOp, LedgerRequest, Refusal};
use crate::phone::PhoneNumber;
use crate::user::UserId;

/// A mobile operator, derived from the number's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// China Mobile (移动).
    Cmcc,
    /// China Unicom (联通).
    Unicom,
    /// China Telecom (电信).
    Telecom,
    /// China Broadnet (广电).
    Broadnet,
    /// Not a known mainland prefix.
    Unknown,
}

impl Operator {
    /// Parses a filter value: `cmcc`/`unicom`/`telecom`/`broadnet` or
    /// 移动/联通/电信/广电 (case-insensitive for the Latin names).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "cmcc" | "移动" | "中国移动" => Self::Cmcc,
            "unicom" | "联通" | "中国联通" => Self::Unicom,
            "telecom" | "电信" | "中国电信" => Self::Telecom,
            "broadnet" | "cbn" | "广电" | "中国广电" => Self::Broadnet,
            _ => return None,
        })
    }

    /// The operator of a mainland mobile, from its prefix (MIIT allocation,
    /// including the virtual-operator blocks 170/171/162/165/167).
    pub fn of(phone: &PhoneNumber) -> Self {
        let Some(n) = phone.cn_national() else {
            return Self::Unknown;
        };
        let p3: u32 = n[..3].parse().unwrap_or(0);
        let p4: u32 = n[..4].parse().unwrap_or(0);
        match p3 {
            134..=139
            | 147
            | 150..=152
            | 157..=159
            | 165
            | 172
            | 178
            | 182..=184
            | 187
            | 188
            | 195
            | 197
            | 198 => Self::Cmcc,
            130..=132 | 145 | 155 | 156 | 166 | 167 | 171 | 175 | 176 | 185 | 186 | 196 => {
                Self::Unicom
            }
            133 | 149 | 153 | 162 | 173 | 174 | 177 | 180 | 181 | 189 | 190 | 191 | 193 | 199 => {
                Self::Telecom
            }
            192 => Self::Broadnet,
            170 => match p4 {
                1700..=1702 => Self::Telecom,
                1703 | 1705 | 1706 => Self::Cmcc,
                _ => Self::Unicom,
            },
            _ => Self::Unknown,
        }
    }
}

/// What a device says about a number (seed 003's `/phones` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberInfo {
    /// The number.
    pub mobile: PhoneNumber,
    /// Channel id of the device that holds the SIM.
    pub cid: String,
    /// SIM subscriber id.
    pub imsi: String,
    /// Device id.
    pub imei: String,
    /// SIM card id.
    pub iccid: String,
    /// Device's network address.
    pub ip: String,
    /// Area (extension), if the device gave one.
    pub area: Option<String>,
}

/// A number in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolNumber {
    /// What the device reported (latest upload wins).
    pub info: NumberInfo,
    /// Derived from the prefix.
    pub operator: Operator,
    /// When first added (Unix s).
    pub added_at: i64,
    /// The lease holding it, if any (it may have run out: see `until`).
    pub lease: Option<LeaseRef>,
    /// Items (apps) it was ever handed out for: never again for those.
    pub used_for: BTreeSet<String>,
}

impl PoolNumber {
    /// A number just taken into the pool.
    pub fn new(info: NumberInfo, now: i64) -> Self {
        Self {
            operator: Operator::of(&info.mobile),
            info,
            added_at: now,
            lease: None,
            used_for: Default::default(),
        }
    }

    /// True when no live lease holds it at `now`.
    pub fn is_free(&self, now: i64) -> bool {
        self.lease.as_ref().is_none_or(|l| l.until <= now)
    }

    /// True when it may be handed out (or leased) for `item` at `now`: free,
    /// and never used for that item before.
    pub fn available_for(&self, item: &str, now: i64) -> bool {
        self.is_free(now) && !self.was_used_for(item)
    }

    /// True when it was handed out or leased for `item` before: it is never
    /// available for that item again.
    pub fn was_used_for(&self, item: &str) -> bool {
        self.used_for.contains(item)
    }

    /// The transition of handing it out for `app` (`GET /mobiles`): it is
    /// never handed out for `app` again.
    pub fn hand_out(&mut self, app: &str) -> NumberInfo {
        self.used_for.insert(app.to_owned());
        self.info.clone()
    }

    /// The transition of leasing it under lease `id` of `req`; returns the
    /// lease record.
    pub fn lease_to(&mut self, req: &LeaseRequest, id: &str) -> Lease {
        self.used_for.insert(req.item.clone());
        self.lease = Some(LeaseRef {
            lease_id: id.to_owned(),
            user: req.user.clone(),
            item: req.item.clone(),
            until: req.until,
        });
        Lease {
            id: id.to_owned(),
            mobile: self.info.mobile.clone(),
            user: req.user.clone(),
            item: req.item.clone(),
            started_at: req.now,
            until: req.until,
            hold_id: req.hold_id.clone(),
            price: req.price,
            charged: false,
            settled: false,
        }
    }
}

/// A run of pool numbers, by upload sequence, all used for one app: every
/// number of the pool whose sequence is in `first..=last` was handed out or
/// leased for it, so is never available for it again. Numbers are only
/// added to the pool after every number already in it (a larger sequence)
/// and never leave it, so a run stays true forever.
///
/// Stores keep each app's runs (disjoint) beside the numbers and update them
/// in the transaction of each hand-out or lease, through a [`PoolSweep`];
/// they only let a sweep jump over numbers it would otherwise visit and
/// skip, and are never needed for correctness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedRun {
    /// Sequence of the first number of the run.
    pub first: u64,
    /// Sequence of the last number of the run.
    pub last: u64,
}

impl UsedRun {
    /// True when `seq` lies in the run.
    pub fn covers(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.last
    }
}

/// What a [`PoolSweep`] changes in its app's runs: remove `removed` first,
/// then add `added` (a run is keyed by its `last`, which an added run may
/// share with a removed one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunChanges {
    /// Runs the sweep merged into others.
    pub removed: Vec<UsedRun>,
    /// Runs to store.
    pub added: Vec<UsedRun>,
}

impl RunChanges {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// The walk of one hand-out or lease over the pool for one app, in upload
/// order (oldest first), jumping over the app's [`UsedRun`]s: the cost of
/// finding numbers does not grow with the numbers already used for the app.
///
/// The store drives it, inside the atomic step of the claim:
///
/// ```text
/// while want more, and let Some(from) = sweep.from():
///     (seq, number) = the first number of the pool with sequence >= from (none: stop)
///     run = the first of the app's stored runs with last >= seq
///     if sweep.skip_run(seq, run): continue          // jumped past the run
///     sweep.visit(seq, &mut number, eligible(&number), take)   // take when eligible
/// apply sweep.finish() to the stored runs
/// ```
///
/// Eligibility stays the caller's rule ([`PoolNumber::available_for`],
/// [`LeaseRequest::eligible`]); the sweep extends the current run over each
/// visited number that is then used for the app (taken now, or before) and
/// ends it at any other, so a run never covers a number still available
/// for the app.
#[derive(Debug, Clone)]
pub struct PoolSweep<'a> {
    app: &'a str,
    /// The next sequence to look at (`None`: past the last possible one).
    from: Option<u64>,
    /// The run being built: every pool number from its `first` up to
    /// `from` is used for the app.
    run: Option<UsedRun>,
    /// True when `run` is not one stored run as it is.
    grown: bool,
    /// Stored runs merged into `run`.
    absorbed: Vec<UsedRun>,
    changes: RunChanges,
}

impl<'a> PoolSweep<'a> {
    /// A sweep for `app` from the oldest number.
    pub fn new(app: &'a str) -> Self {
        Self {
            app,
            from: Some(0),
            run: None,
            grown: false,
            absorbed: Vec::new(),
            changes: RunChanges::default(),
        }
    }

    /// The lowest sequence still to look at; `None` when there is none.
    pub fn from(&self) -> Option<u64> {
        self.from
    }

    /// `seq` is the first number at or after [`from`](Self::from), `run`
    /// the app's first stored run ending at or after `seq`. True when the
    /// run covers `seq`: the sweep moved past the run (ask
    /// [`from`](Self::from) again); false when `seq` is to be visited.
    pub fn skip_run(&mut self, seq: u64, run: Option<UsedRun>) -> bool {
        let Some(run) = run.filter(|r| r.covers(seq)) else {
            return false;
        };
        if self.from.is_none_or(|from| seq < from) {
            return false;
        }
        match &mut self.run {
            // Nothing lies between the current run and this number (it is
            // the first at or after `from`): the two become one.
            Some(current) => {
                current.first = current.first.min(run.first);
                current.last = run.last;
                self.grown = true;
            }
            None => {
                self.run = Some(run);
                self.grown = false;
            }
        }
        self.absorbed.push(run);
        self.from = run.last.checked_add(1);
        true
    }

    /// Visits the number at `seq` (not covered by a run): when `eligible`,
    /// `take` changes it (marks it used for the app) and what it returns is
    /// returned. The current run then grows over the number if it is used
    /// for the app, and ends otherwise.
    pub fn visit<T>(
        &mut self,
        seq: u64,
        number: &mut PoolNumber,
        eligible: bool,
        take: impl FnOnce(&mut PoolNumber) -> Option<T>,
    ) -> Option<T> {
        let got = if eligible { take(number) } else { None };
        if number.was_used_for(self.app) {
            self.extend(seq);
        } else {
            self.close();
        }
        self.from = seq.checked_add(1);
        got
    }

    /// The number at `seq` could not be visited (its record is missing):
    /// the current run ends before it.
    pub fn pass(&mut self, seq: u64) {
        self.close();
        self.from = seq.checked_add(1);
    }

    /// The changes to the app's stored runs, to apply in the same atomic
    /// step as the claim.
    pub fn finish(mut self) -> RunChanges {
        self.close();
        self.changes
    }

    fn extend(&mut self, seq: u64) {
        match &mut self.run {
            Some(current) => current.last = seq,
            None => {
                self.run = Some(UsedRun {
                    first: seq,
                    last: seq,
                })
            }
        }
        self.grown = true;
    }

    fn close(&mut self) {
        if let Some(run) = self.run.take() {
            if self.grown {
                self.changes.removed.append(&mut self.absorbed);
                self.changes.added.push(run);
            }
        }
        self.absorbed.clear();
        self.grown = false;
    }
}

/// The current lease of a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    /// The lease.
    pub lease_id: String,
    /// Who holds it.
    pub user: UserId,
    /// For which item.
    pub item: String,
    /// Ends at (Unix s).
    pub until: i64,
}

/// An item: an app that uses numbers, with its prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Identifier, e.g. `com.yy.huanju` (hub's `itemId`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Price of a lease (balance units), taken when its first SMS arrives.
    pub price: Amount,
    /// Price of one SMS sent from a leased number.
    pub send_price: Amount,
    /// Regex whose first group is the code in an SMS of this app; the
    /// default finds the first run of 4 to 8 digits.
    pub code_pattern: Option<String>,
}

/// Longest item id accepted.
pub const MAX_ITEM_ID_LEN: usize = 128;

/// The default code pattern: 4 to 8 digits not part of a longer number.
pub const DEFAULT_CODE_PATTERN: &str = r"(?:^|\D)(\d{4,8})(?:\D|$)";

/// Extracts the code from an SMS text with `pattern` (its first group, or the
/// whole match), falling back to [`DEFAULT_CODE_PATTERN`]. A text that is
/// itself only digits is its own code.
pub fn extract_code(text: &str, pattern: Option<&str>) -> Option<String> {
    let t = text.trim();
    if !t.is_empty() && t.len() <= 16 && t.bytes().all(|b| b.is_ascii_digit()) {
        return Some(t.to_owned());
    }
    let custom = pattern.and_then(compiled);
    let default = compiled(DEFAULT_CODE_PATTERN)?;
    for re in custom.iter().chain(std::iter::once(&default)) {
        if let Some(c) = re.captures(t) {
            let m = c.get(1).or_else(|| c.get(0))?;
            return Some(m.as_str().to_owned());
        }
    }
    None
}

/// Compiled patterns, by source (bounded; cleared when full).
fn compiled(pattern: &str) -> Option<Regex> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut g = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(re) = g.get(pattern) {
        return re.clone();
    }
    if g.len() >= 256 {
        g.clear();
    }
    let re = Regex::new(pattern).ok();
    g.insert(pattern.to_owned(), re.clone());
    re
}

/// A lease of one number to one user for one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Unique id.
    pub id: String,
    /// The number.
    pub mobile: PhoneNumber,
    /// Who.
    pub user: UserId,
    /// For which item.
    pub item: String,
    /// Started (Unix s).
    pub started_at: i64,
    /// Ends (Unix s): hub's `useTimestamp`.
    pub until: i64,
    /// The ledger hold the price is reserved under.
    pub hold_id: String,
    /// The price reserved for this lease.
    pub price: Amount,
    /// The price was captured (the first SMS arrived).
    pub charged: bool,
    /// Settled after its end (hold released if never charged).
    pub settled: bool,
}

/// Filters for leasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseFilter {
    /// Only numbers with this area.
    pub area: Option<String>,
    /// Only numbers of this operator.
    pub operator: Option<Operator>,
    /// Exactly this number.
    pub custom: Option<PhoneNumber>,
}

impl LeaseFilter {
    /// The lease eligibility rule: `n` is available for `item` at `now` and
    /// passes the filter.
    pub fn admits(&self, n: &PoolNumber, item: &str, now: i64) -> bool {
        n.available_for(item, now) && self.matches(n)
    }

    /// True when `n` passes the filter.
    pub fn matches(&self, n: &PoolNumber) -> bool {
        self.area
            .as_ref()
            .is_none_or(|a| n.info.area.as_deref() == Some(a.as_str()))
            && self.operator.is_none_or(|o| n.operator == o)
            && self.custom.as_ref().is_none_or(|c| &n.info.mobile == c)
    }
}

impl LeaseRequest {
    /// The rule of a lease's price: before any number is picked, the price
    /// of every number wanted is held under [`hold_id`](Self::hold_id)
    /// (refused: nothing is leased); `None` when there is nothing to hold.
    pub fn hold_request(&self) -> Option<LedgerRequest> {
        let terms = self.hold?;
        let total = self.price.checked_mul(self.lease_ids.len() as Amount)?;
        (total > 0).then(|| LedgerRequest {
            op_id: self.hold_id.clone(),
            user: self.user.clone(),
            op: LedgerOp::Hold {
                amount: total,
                expires_at: terms.expires_at,
            },
            at: self.now,
        })
    }

    /// … and after `leased` numbers were picked, what the hold reserved for
    /// the numbers not found is released (operation `<hold_id>:unused`).
    pub fn release_request(&self, leased: usize) -> Option<LedgerRequest> {
        self.hold?;
        let wanted = self.lease_ids.len().checked_sub(leased)?;
        let unused = self.price.checked_mul(wanted as Amount)?;
        (unused > 0).then(|| LedgerRequest {
            op_id: format!("{}:unused", self.hold_id),
            user: self.user.clone(),
            op: LedgerOp::Release {
                hold_id: self.hold_id.clone(),
                amount: unused,
            },
            at: self.now,
        })
    }

    /// True when `n` may be leased under this request: available for the
    /// item at `now`, and passing the filter.
    pub fn eligible(&self, n: &PoolNumber) -> bool {
        self.filter.admits(n, &self.item, self.now)
    }
}

/// A lease to make (the store picks the numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Who.
    pub user: UserId,
    /// For which item.
    pub item: String,
    /// Ids for the leases, one per number wanted (at most this many).
    pub lease_ids: Vec<String>,
    /// Filters.
    pub filter: LeaseFilter,
    /// Now (Unix s).
    pub now: i64,
    /// End of the leases (Unix s).
    pub until: i64,
    /// The hold reserving the prices.
    pub hold_id: String,
    /// Price of each lease.
    pub price: Amount,
    /// Place the hold in the same atomic step (see
    /// [`hold_request`](Self::hold_request)); `None`: the caller manages
    /// the hold itself.
    pub hold: Option<HoldTerms>,
}

/// How a lease request's hold is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldTerms {
    /// The hold's expiry ([`crate::ledger::Hold::expires_at`]): what a
    /// crash could orphan is released after it.
    pub expires_at: Option<i64>,
}

/// The outcome of [`crate::store::PhonePool::lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// These numbers were leased (possibly none), and their prices held.
    Leased(Vec<Lease>),
    /// The balance could not hold `price × wanted`: nothing changed.
    Refused(Refusal),
}

impl LeaseOutcome {
    /// The leases made (none when refused).
    pub fn leases(self) -> Vec<Lease> {
        match self {
            Self::Leased(l) => l,
            Self::Refused(_) => Vec::new(),
        }
    }
}

/// An SMS received by a pool number (seed 003's `/vcodes` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedSms {
    /// The number that received it.
    pub mobile: PhoneNumber,
    /// The text as uploaded (`vcode`).
    pub text: String,
    /// The extracted code (the text when none could be found).
    pub code: String,
    /// The app it is for, if the device knew.
    pub appname: Option<String>,
    /// Channel id of the device.
    pub chanlid: Option<String>,
    /// Received (Unix s).
    pub at: i64,
}

/// A text queued for the device holding a number (hub `CSSendMsg`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMessage {
    /// From this number.
    pub mobile: PhoneNumber,
    /// For this item.
    pub item_id: String,
    /// The text.
    pub msg: String,
    /// Queued (Unix s).
    pub at: i64,
}

/// The pool at a glance (root's view, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// The pool size (`/setsize`).
    pub size: u32,
    /// Numbers stored.
    pub numbers: u64,
    /// Leases not yet settled (their numbers are not available).
    pub open_leases: u64,
}

impl PoolStats {
    /// Numbers not under an unsettled lease.
    pub fn available(&self) -> u64 {
        self.numbers.saturating_sub(self.open_leases)
    }
}

/// What a number intake did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intake {
    /// Numbers stored or refreshed, in upload order.
    pub used: Vec<PhoneNumber>,
    /// True when nothing was taken because the pool is full.
    pub full: bool,
}

/// The intake rule, applied entry by entry by a
/// [`crate::store::PhonePool`] inside its atomic intake: known numbers
/// refresh their metadata without counting against the size; new ones are
/// taken while the available numbers (stored minus those under an
/// unsettled lease) are fewer than the pool size.
#[derive(Debug, Clone)]
pub struct IntakeTally {
    size: u64,
    stored: u64,
    open_leases: u64,
    refused: bool,
    out: Intake,
}

impl IntakeTally {
    /// An intake into a pool of `size` holding `stored` numbers, of which
    /// `open_leases` are under an unsettled lease.
    pub fn new(size: u32, stored: u64, open_leases: u64) -> Self {
        Self {
            size: u64::from(size),
            stored,
            open_leases,
            refused: false,
            out: Intake::default(),
        }
    }

    /// A known number: refreshes what the device reports.
    pub fn refresh(&mut self, number: &mut PoolNumber, info: &NumberInfo) {
        number.info = info.clone();
        if !self.out.used.contains(&info.mobile) {
            self.out.used.push(info.mobile.clone());
        }
    }

    /// A new number: the record to store, or `None` when the pool is full.
    pub fn admit(&mut self, info: &NumberInfo, now: i64) -> Option<PoolNumber> {
        if self.stored.saturating_sub(self.open_leases) >= self.size {
            self.refused = true;
            return None;
        }
        self.stored += 1;
        self.out.used.push(info.mobile.clone());
        Some(PoolNumber::new(info.clone(), now))
    }

    /// Numbers stored after the entries so far.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// The outcome.
    pub fn finish(mut self) -> Intake {
        self.out.full = self.refused && self.out.used.is_empty();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PhoneNumber {
        PhoneNumber::parse_cn_mobile(s).unwrap()
    }

    fn num(i: u64) -> PoolNumber {
        let info = NumberInfo {
            mobile: p(&format!("1380000{i:04}")),
            cid: "d".into(),
            imsi: "i".into(),
            imei: "e".into(),
            iccid: "c".into(),
            ip: "ip".into(),
            area: None,
        };
        PoolNumber::new(info, 0)
    }

    /// Runs the sweep the way a store does over `numbers` (sequence,
    /// number) and `runs` (sorted by `last`); returns the sequences taken
    /// and the changes.
    fn sweep(
        app: &str,
        want: usize,
        numbers: &mut [(u64, PoolNumber)],
        runs: &[UsedRun],
        visited: &mut usize,
    ) -> (Vec<u64>, RunChanges) {
        let mut sweep = PoolSweep::new(app);
        let mut taken = Vec::new();
        while taken.len() < want {
            let Some(from) = sweep.from() else { break };
            let Some((seq, n)) = numbers.iter_mut().find(|(s, _)| *s >= from) else {
                break;
            };
            let run = runs.iter().find(|r| r.last >= *seq).copied();
            if sweep.skip_run(*seq, run) {
                continue;
            }
            *visited += 1;
            let ok = n.available_for(app, 0);
            if let Some(s) = sweep.visit(*seq, n, ok, |n| {
                n.hand_out(app);
                Some(*seq)
            }) {
                taken.push(s);
            }
        }
        (taken, sweep.finish())
    }

    fn apply(runs: &mut Vec<UsedRun>, changes: RunChanges) {
        runs.retain(|r| !changes.removed.contains(r));
        runs.extend(changes.added);
        runs.sort_by_key(|r| r.last);
    }

    #[test]
    fn sweeps_jump_over_runs_and_merge_them() {
        // Sequences with gaps, as sled's and PostgreSQL's are.
        let mut numbers: Vec<(u64, PoolNumber)> = (0..20).map(|i| (i * 3 + 1, num(i))).collect();
        let mut runs = Vec::new();
        let mut visited = 0;
        let (taken, ch) = sweep("a", 5, &mut numbers, &runs, &mut visited);
        assert_eq!(taken, vec![1, 4, 7, 10, 13]);
        assert_eq!(ch.added, vec![UsedRun { first: 1, last: 13 }]);
        apply(&mut runs, ch);
        // Number 19 (seq 19) leased to someone: the next sweep passes it.
        numbers[6].1.lease = Some(LeaseRef {
            lease_id: "l".into(),
            user: UserId::from_string("u".into()),
            item: "b".into(),
            until: 10,
        });
        visited = 0;
        let (taken, ch) = sweep("a", 3, &mut numbers, &runs, &mut visited);
        assert_eq!(taken, vec![16, 22, 25]);
        assert_eq!(visited, 4, "the run of five was jumped in one step");
        assert_eq!(ch.removed, vec![UsedRun { first: 1, last: 13 }]);
        assert_eq!(
            ch.added,
            vec![
                UsedRun { first: 1, last: 16 },
                UsedRun {
                    first: 22,
                    last: 25
                }
            ]
        );
        apply(&mut runs, ch);
        // The lease ends: the number is taken and the runs become one.
        numbers[6].1.lease = None;
        visited = 0;
        let (taken, ch) = sweep("a", 2, &mut numbers, &runs, &mut visited);
        assert_eq!(taken, vec![19, 28]);
        assert_eq!(visited, 2);
        apply(&mut runs, ch);
        assert_eq!(runs, vec![UsedRun { first: 1, last: 28 }]);
        // A number used for the app outside a sweep (a lease of one number)
        // is folded into the run by the next sweep.
        numbers[10].1.hand_out("a");
        let (taken, ch) = sweep("a", 1, &mut numbers, &runs, &mut visited);
        assert_eq!(taken, vec![34]);
        apply(&mut runs, ch);
        assert_eq!(runs, vec![UsedRun { first: 1, last: 34 }]);
        // Another app is not concerned; nothing left changes nothing.
        let (taken, ch) = sweep("b", 1, &mut numbers, &[], &mut visited);
        assert_eq!(
            (taken, ch.added),
            (vec![1], vec![UsedRun { first: 1, last: 1 }])
        );
        let mut all = runs.clone();
        let (taken, ch) = sweep("a", 100, &mut numbers, &runs, &mut visited);
        assert_eq!(taken.len(), 20 - 12);
        apply(&mut all, ch);
        assert_eq!(all, vec![UsedRun { first: 1, last: 58 }]);
        let (taken, ch) = sweep("a", 1, &mut numbers, &all, &mut visited);
        assert!(taken.is_empty() && ch.is_empty());
    }

    #[test]
    fn operators_by_prefix() {
        assert_eq!(Operator::of(&p("13811112222")), Operator::Cmcc);
        assert_eq!(Operator::of(&p("18250794865")), Operator::Cmcc);
        assert_eq!(Operator::of(&p("17342060825")), Operator::Telecom);
        assert_eq!(Operator::of(&p("13012345678")), Operator::Unicom);
        assert_eq!(Operator::of(&p("19212345678")), Operator::Broadnet);
        assert_eq!(Operator::of(&p("17001234567")), Operator::Telecom);
        assert_eq!(Operator::of(&p("17051234567")), Operator::Cmcc);
        assert_eq!(Operator::of(&p("17091234567")), Operator::Unicom);
        assert_eq!(Operator::of(&p("11012345678")), Operator::Unknown);
        assert_eq!(Operator::parse("移动"), Some(Operator::Cmcc));
        assert_eq!(Operator::parse("Unicom"), Some(Operator::Unicom));
        assert_eq!(Operator::parse("x"), None);
    }

    #[test]
    fn code_extraction() {
        assert_eq!(extract_code("201708", None).as_deref(), Some("201708"));
        assert_eq!(
            extract_code("【欢聚】验证码482913，5分钟内有效", None).as_deref(),
            Some("482913")
        );
        assert_eq!(extract_code("code: 1234.", None).as_deref(), Some("1234"));
        assert_eq!(extract_code("call 13811112222 now", None), None);
        assert_eq!(
            extract_code("ref 99 code AB-7731", Some(r"AB-(\d+)")).as_deref(),
            Some("7731")
        );
        // A broken custom pattern falls back to the default.
        assert_eq!(extract_code("码 5566", Some("(")).as_deref(), Some("5566"));
        assert_eq!(extract_code("no digits", None), None);
    }
}

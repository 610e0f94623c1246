//! Billing: balances and the operations on them, over the
//! [`crate::store::LedgerStore`]. Every movement carries an operation id, so
//! a retried request applies once.

use std::sync::Arc;

use crate::clock::Clock;
use crate::error::CoreError;
use crate::ledger::{Amount, Balance, LedgerOp, LedgerOutcome, LedgerRequest, Refusal};
use crate::random::{random_hex, RandomSource};
use crate::store::{Stores, UserKey};
use crate::user::UserId;

/// Balances and movements.
#[derive(Debug, Clone)]
pub struct Billing {
    stores: Stores,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
}

impl Billing {
    /// A billing service over the stores.
    pub fn new(stores: Stores, clock: Arc<dyn Clock>, rng: Arc<dyn RandomSource>) -> Self {
        Self { stores, clock, rng }
    }

    /// A fresh random operation id with a readable prefix.
    pub fn new_op_id(&self, prefix: &str) -> String {
        format!("{prefix}:{}", random_hex(self.rng.as_ref(), 16))
    }

    /// Applies `op` to `user` under `op_id`. A duplicate id is success (the
    /// operation already happened); refusals map to
    /// [`CoreError::InsufficientBalance`] or [`CoreError::InvalidParameter`].
    pub async fn apply(
        &self,
        user: &UserId,
        op_id: String,
        op: LedgerOp,
    ) -> Result<Balance, CoreError> {
        let outcome = self
            .stores
            .ledger
            .apply(LedgerRequest {
                op_id,
                user: user.clone(),
                op,
                at: self.clock.unix(),
            })
            .await?;
        match outcome {
            LedgerOutcome::Applied(b) | LedgerOutcome::Duplicate(b) => Ok(b),
            LedgerOutcome::Refused(r) => Err(refusal_error(r)),
        }
    }

    /// Root's top-up (`/v2/charge`): `amount > 0` to the user named
    /// `username`. `op_id` makes a retry safe; without one every call
    /// applies.
    pub async fn charge(
        &self,
        username: &str,
        amount: Amount,
        op_id: Option<String>,
    ) -> Result<Balance, CoreError> {
        if amount <= 0 {
            return Err(CoreError::InvalidParameter("charge"));
        }
        let name =
            crate::identity::Username::parse(username).map_err(|_| CoreError::UserNotFound)?;
        let user = self
            .stores
            .users
            .user(&UserKey::Username(name.clone()))
            .await?
            .ok_or(CoreError::UserNotFound)?;
        let op_id = match op_id {
            Some(id) => format!("charge:{id}"),
            None => self.new_op_id("charge"),
        };
        self.apply(&user.id, op_id, LedgerOp::Charge { amount })
            .await
    }

    /// The user's balance.
    pub async fn balance(&self, user: &UserId) -> Result<Balance, CoreError> {
        Ok(self.stores.ledger.balance(user).await?)
    }
}

/// The error a caller sees for a refused ledger movement.
pub fn refusal_error(r: Refusal) -> CoreError {
    match r {
        Refusal::Insufficient { available } => CoreError::InsufficientBalance { available },
        Refusal::BadHold => CoreError::InvalidParameter("hold"),
        Refusal::InvalidAmount => CoreError::InvalidParameter("amount"),
    }
}

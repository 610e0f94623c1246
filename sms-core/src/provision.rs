//! Provisioning of third-party chat credentials (`telsignup`'s
//! `huanxin_id`/`huanxin_password`), behind a port so that an embedder can
//! call the real chat service.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::CoreError;
use crate::phone::PhoneNumber;
use crate::random::{random_hex, RandomSource};

/// Credentials for the chat service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatCredentials {
    /// The chat id (the phone's wire form).
    pub id: String,
    /// The chat secret.
    pub password: String,
}

/// Creates chat accounts for new users.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ChatProvisioner: Debug + Send + Sync + 'static {
    /// Credentials for the user registered with `phone`.
    async fn provision(&self, phone: &PhoneNumber) -> Result<ChatCredentials, CoreError>;
}

/// The default provisioner: id = phone, password = 128 random bits in hex.
#[derive(Debug, Clone)]
pub struct RandomProvisioner {
    rng: Arc<dyn RandomSource>,
}

impl RandomProvisioner {
    /// A provisioner drawing secrets from `rng`.
    pub fn new(rng: Arc<dyn RandomSource>) -> Self {
        Self { rng }
    }
}

#[async_trait]
impl ChatProvisioner for RandomProvisioner {
    async fn provision(&self, phone: &PhoneNumber) -> Result<ChatCredentials, CoreError> {
        Ok(ChatCredentials {
            id: phone.to_string(),
            password: random_hex(self.rng.as_ref(), 16),
        })
    }
}

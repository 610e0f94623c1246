//! Bringing your own storage for one port: `ItemStore` over a `HashMap`,
//! every other port borrowed from `MemoryStore`, proven with the conformance
//! kit, then used by a core.
//!
//! ```sh
//! cargo run --example custom_store      # runs the kit's item checks, then uses the store
//! cargo test --example custom_store     # the same checks as #[test]s, via the kit's macro
//! ```
//!
//! A real backend (PostgreSQL, Redis, …) does the same for every port it
//! implements: keep each trait's `# Contract`, then run the kit's checks for
//! that port (`store_conformance_tests!(items: …)`, `codes: …`, …) or all of
//! them (`store_conformance_tests!(…)`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sms_core::pool::Item;
use sms_core::prelude::*;
use sms_core::store::{ItemStore, StoreResult};

/// Items (apps and their prices) in a `HashMap`.
#[derive(Debug, Default)]
pub struct HashMapItems {
    items: Mutex<HashMap<String, Item>>,
}

#[async_trait]
impl ItemStore for HashMapItems {
    async fn put_item(&self, item: Item) -> StoreResult<()> {
        // Contract: creates or replaces by id; durable on Ok (here: as
        // durable as the process, like MemoryStore).
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        items.insert(item.id.clone(), item);
        Ok(())
    }

    async fn item(&self, id: &str) -> StoreResult<Option<Item>> {
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        Ok(items.get(id).cloned())
    }

    async fn items(&self) -> StoreResult<Vec<Item>> {
        // Contract: every item, by id.
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Item> = items.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }
}

/// Every port from a fresh `MemoryStore`, except items, which are ours.
pub async fn stores() -> Stores {
    Stores {
        items: Arc::new(HashMapItems::default()),
        ..Stores::from_single(Arc::new(MemoryStore::new()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The kit's checks for this port, each on a fresh store; a broken
    // contract panics with the rule it checks.
    let mut ran = 0;
    for (port, name, rule) in sms_core::testkit::CHECKS {
        if *port != "ItemStore" {
            continue;
        }
        match *name {
            "items_put_and_get" => sms_core::testkit::items_put_and_get(&stores().await).await,
            other => return Err(format!("no runner for {other}").into()),
        }
        println!("ok   {name}: {rule}");
        ran += 1;
    }
    if ran == 0 {
        return Err("the kit has no ItemStore check".into());
    }

    // The core runs on the mixed stores like on any other.
    let core = Core::test_builder(stores().await).build()?;
    core.stores
        .items
        .put_item(Item {
            id: "com.example.app".into(),
            name: "Example".into(),
            price: 10,
            send_price: 1,
            code_pattern: None,
        })
        .await?;
    let item = core.stores.items.item("com.example.app").await?;
    println!("the core reads items from the HashMap: {item:?}");
    println!("custom_store: done");
    Ok(())
}

#[cfg(test)]
mod conformance {
    // One #[test] per check of the ItemStore contract.
    sms_core::store_conformance_tests!(items: super::stores());
}

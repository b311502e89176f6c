//! Fuzzes the inventory loader: YAML text in, a validated `Inventory` or a report of problems
//! out, never a panic.
//!
//! The inventory is the one file people write by hand, so every odd shape of it must end in a
//! message. Beyond "no panic", it checks what the loader promises: a refused file carries at
//! least one error (warnings alone never refuse), an accepted one carries warnings only, and an
//! accepted inventory written back with `to_yaml` (every default spelled out) loads again to the
//! very same inventory, so `haop` can store and reread what it validated.
#![no_main]

use haop_coordinator::inventory::{Inventory, InventoryError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match Inventory::from_yaml(text, "fuzz.yaml") {
        Ok((inventory, warnings)) => {
            assert!(
                warnings.iter().all(|w| !w.is_error()),
                "an accepted inventory came back with an error: {warnings:?}"
            );
            let yaml = inventory
                .to_yaml()
                .expect("a validated inventory serializes");
            let again = match Inventory::from_yaml(&yaml, "written.yaml") {
                Ok((again, _)) => again,
                Err(e) => panic!("the written-back inventory does not load: {e}\n{yaml}"),
            };
            assert_eq!(again, inventory, "written back as:\n{yaml}");
        }
        Err(e) => {
            if let InventoryError::Invalid { problems, .. } = &e {
                assert!(
                    problems.iter().any(|p| p.is_error()),
                    "refused without an error: {problems:?}"
                );
            }
            // Rendering the message is part of the path a person sees.
            let _ = e.to_string();
        }
    }
});

//! `haop lab up NAME --from-seed`: a lab whose hosts were built by the seed's runbook as
//! written, before haop came near them: the starting point of `haop adopt`.
//!
//! [`pki`] makes the seed's certificates as cfssl does.

pub mod pki;
